"""The gRPC edge: ``inference.GRPCInferenceService`` over the same data plane as REST."""
