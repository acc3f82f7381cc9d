"""Generated protobuf and gRPC modules of the Tollgate API (package tollgate.v1)."""
