"""tools/wsprobe."""
