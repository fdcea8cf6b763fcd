// Server target.
