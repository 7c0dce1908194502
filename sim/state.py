"""Player state construction (pure). Encoding lives with ``apply`` in ``protocol/mirror.py``."""

from __future__ import annotations

from protocol.mirror import decode_state, encode_state
from protocol.model import PlayerState


def new_player(player_id: int, name: str) -> PlayerState:
    """A player at version 0: nothing at all. Compartments, health and the starter kit
    arrive as effects (``sim.inventory.grant_starter_kit``), so a mirror sees them too."""
    return PlayerState(player_id=player_id, name=name)


__all__ = ["decode_state", "encode_state", "new_player"]
