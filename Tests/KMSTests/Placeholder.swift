import Testing

@Test func placeholder_KMSTests() {}
