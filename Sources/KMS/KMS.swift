// KMS target.
