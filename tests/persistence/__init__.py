"""tests/persistence."""
