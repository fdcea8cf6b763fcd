import Testing

@Test func placeholder_MetricsTests() {}
