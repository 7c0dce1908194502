"""Player state construction and read-side helpers (pure)."""

from __future__ import annotations

import msgspec

from protocol.model import PlayerState

# Compartment sizes for the first slice of the model; the game-model issue makes them data.
COMPARTMENT_SIZES: dict[str, int] = {"backpack": 24}

# Bytes follow dict insertion order, which apply() makes a function of the effect history:
# the same snapshot + the same effects give identical bytes (the replay property). Two equal
# states reached by different histories may differ in bytes; compare those with ==.
# (msgspec cannot sort int-keyed dicts, so order="sorted" is not an option.)
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(PlayerState)


def new_player(player_id: int, name: str) -> PlayerState:
    """A player at version 0: empty compartments, nothing equipped."""
    return PlayerState(
        player_id=player_id,
        name=name,
        compartments={name: [None] * size for name, size in COMPARTMENT_SIZES.items()},
    )


def encode_state(player: PlayerState) -> bytes:
    """Canonical bytes of a state: the snapshot format, and what replay tests compare."""
    return _encoder.encode(player)


def decode_state(data: bytes) -> PlayerState:
    return _decoder.decode(data)


def first_free(cells: list[int | None]) -> int | None:
    for index, cell in enumerate(cells):
        if cell is None:
            return index
    return None
