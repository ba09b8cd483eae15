"""The statistics: paired exact tests (``stats``) and per-slice verdicts (``gate``); pure numpy/scipy."""
