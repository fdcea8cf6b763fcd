import Testing

@Test func placeholder_GRPCTests() {}
