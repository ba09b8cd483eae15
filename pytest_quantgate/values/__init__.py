"""Plain values every layer shares: prompts, transcripts, model specs, calibration, digests, files."""
