"""Where the tests find the repository's files, wherever the test file itself lives."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The repository root."""
CONFIGS = ROOT / "configs"
"""The shipped configs (``configs/``)."""
FIXTURES = ROOT / "tests" / "fixtures"
"""Tiny files in the released data formats (``tests/fixtures/``)."""
