"""The simulation applies effects with the protocol's mirror: one implementation for server
and clients (see ``protocol/mirror.py``), so a client mirror cannot drift from the server."""

from __future__ import annotations

from protocol.mirror import apply, apply_all

__all__ = ["apply", "apply_all"]
