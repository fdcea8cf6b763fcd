import Testing

@Test func placeholder_AuditTests() {}
