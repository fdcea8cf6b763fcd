// HTTP2 target.
