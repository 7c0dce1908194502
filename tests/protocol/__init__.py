"""tests/protocol."""
