"""Report writers: terminal lines and the JSON file (more formats to come)."""

from __future__ import annotations
