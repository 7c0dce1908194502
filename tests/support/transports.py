"""The server's WebSocket transports (``gearhall serve --transport``): suites that must hold
for every transport are parametrised over this list."""

TRANSPORTS = ["websockets", "picows"]
