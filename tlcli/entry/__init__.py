"""Per-verb script entries (see fit.py)."""
