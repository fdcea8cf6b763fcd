// HPACK target.
