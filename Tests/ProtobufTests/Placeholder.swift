import Testing

@Test func placeholder_ProtobufTests() {}
