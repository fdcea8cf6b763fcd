// Protobuf target.
