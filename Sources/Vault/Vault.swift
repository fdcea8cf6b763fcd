// Vault target.
