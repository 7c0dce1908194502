"""tests/server."""
