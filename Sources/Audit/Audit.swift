// Audit target.
