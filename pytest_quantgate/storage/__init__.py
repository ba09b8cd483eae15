"""Storage: model fingerprints, the reference cache store, quantized checkpoints."""
