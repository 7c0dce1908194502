"""Player state construction (pure). Encoding lives with ``apply`` in ``protocol/mirror.py``."""

from __future__ import annotations

import sys

import msgspec

from protocol.mirror import decode_state, encode_state
from protocol.model import PlayerState


def new_player(player_id: int, name: str) -> PlayerState:
    """A player at version 0: nothing at all. Compartments, health and the starter kit
    arrive as effects (``sim.inventory.grant_starter_kit``), so a mirror sees them too."""
    return PlayerState(player_id=player_id, name=name)


def share_strings(state: PlayerState) -> PlayerState:
    """Intern the template ids of a decoded state's items (in place).

    Decoding gives each item its own copy of its template id: about 60 bytes an item, a
    sixth of a loaded player. Items the rules create share the catalog's strings already.
    """
    items = state.items
    for item_id, item in items.items():
        template = sys.intern(item.template)
        if template is not item.template:
            items[item_id] = msgspec.structs.replace(item, template=template)
    return state


__all__ = ["decode_state", "encode_state", "new_player", "share_strings"]
