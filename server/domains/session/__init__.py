"""server/domains/session."""
