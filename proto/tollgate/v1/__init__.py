"""tollgate.v1: modules generated from the .proto files beside this one at build time."""
