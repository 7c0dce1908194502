"""server/domains."""
