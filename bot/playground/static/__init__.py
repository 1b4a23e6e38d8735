"""Package data (kept importable so setuptools ships it)."""
