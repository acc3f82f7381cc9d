"""Tollgate engine: domain, kernels, store and batching behind the gRPC edge."""
