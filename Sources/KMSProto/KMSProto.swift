// KMSProto target.
