import Testing

@Test func placeholder_VaultTests() {}
