"""The charging path: wire bytes decoded, batched, priced by the kernels, applied, answered."""
