// GRPC target.
