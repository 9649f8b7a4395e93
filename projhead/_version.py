"""The package version, in one place (pyproject reads it; saved heads and caches record it)."""
__version__ = "0.1.0"
