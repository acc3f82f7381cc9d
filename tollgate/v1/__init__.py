"""tollgate.v1: modules generated at build time from proto/tollgate/v1/*.proto."""
