"""Test-wide setup: the tests/ folder on sys.path for the shared helpers (graphs, numerics).

The repository root is deliberately not on sys.path: tests import the installed normfold
(whose `normfold.cli` comes from the top-level cli/ folder), never the source tree directly.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
