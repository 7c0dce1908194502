"""Shared test helpers: a real Postgres, a real server, a real WebSocket client."""
