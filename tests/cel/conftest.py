"""A cluster of its own for the CEL tests: only the exported policies act on it."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
