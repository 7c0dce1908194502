"""server/domains/inventory."""
