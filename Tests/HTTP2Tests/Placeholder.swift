import Testing

@Test func placeholder_HTTP2Tests() {}
