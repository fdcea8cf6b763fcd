import Testing

@Test func placeholder_HPACKTests() {}
