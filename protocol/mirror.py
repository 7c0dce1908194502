"""``apply(player, effect)``: the one way player state changes — on the server and in clients.

The server's simulation applies effects with this function, and a client that keeps a
mirror of its player applies the same effects with the same function, so both hold
byte-identical state (``encode_state``) at every version. ``Mirror`` wraps it for clients:
start from a welcome's state, feed it replies and ``player.delta`` pushes.

Apply never fails and never validates: rules validated before the effect existed, and the
journal replays effects that were valid when they were made. It needs no item catalog —
every effect carries what it changes. It mutates the state in place (effects are applied
at request rate; copying the state each time would dominate) and bumps ``version`` by one
per effect. Dict insertion order is a function of the effect history, so the same start
state and effects give identical bytes.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from protocol.model import (
    EQUIPMENT,
    GRANT_KEYS_KEPT,
    ActiveEffectStarted,
    AnyEffect,
    ChargesChanged,
    CompartmentResized,
    CooldownStarted,
    GrantRecorded,
    HealthChanged,
    ItemBound,
    ItemCreated,
    ItemDestroyed,
    ItemsMoved,
    Loc,
    PlayerLeveledUp,
    PlayerState,
    SkillLeveledUp,
    StackChanged,
    XpGained,
)

_state_encoder = msgspec.msgpack.Encoder()
_state_decoder = msgspec.msgpack.Decoder(PlayerState)


def encode_state(player: PlayerState) -> bytes:
    """Canonical bytes of a state: the snapshot format, and what mirror tests compare."""
    return _state_encoder.encode(player)


def decode_state(data: bytes) -> PlayerState:
    return _state_decoder.decode(data)


def _clear(player: PlayerState, loc: Loc, item_id: int) -> None:
    where, key = loc
    if where == EQUIPMENT:
        if player.equipment.get(str(key)) == item_id:
            del player.equipment[str(key)]
    else:
        cells = player.compartments[where]
        assert isinstance(key, int)
        if cells[key] == item_id:
            cells[key] = None


def _place(player: PlayerState, loc: Loc, item_id: int) -> None:
    where, key = loc
    if where == EQUIPMENT:
        player.equipment[str(key)] = item_id
    else:
        assert isinstance(key, int)
        player.compartments[where][key] = item_id


def apply(player: PlayerState, effect: AnyEffect) -> PlayerState:
    """Apply one effect to ``player`` (in place) and return it."""
    if isinstance(effect, ItemsMoved):
        for move in effect.moves:
            _clear(player, move.src, move.item_id)
        for move in effect.moves:
            _place(player, move.dst, move.item_id)
    elif isinstance(effect, CooldownStarted):
        player.cooldowns[effect.key] = effect.ready_at_ms
    elif isinstance(effect, StackChanged):
        player.items[effect.item_id] = msgspec.structs.replace(
            player.items[effect.item_id], qty=effect.qty
        )
    elif isinstance(effect, ItemCreated):
        player.items[effect.item.id] = effect.item
        _place(player, effect.dst, effect.item.id)
    elif isinstance(effect, ItemDestroyed):
        _clear(player, effect.src, effect.item_id)
        del player.items[effect.item_id]
    elif isinstance(effect, ChargesChanged):
        player.items[effect.item_id] = msgspec.structs.replace(
            player.items[effect.item_id], charges=effect.charges
        )
    elif isinstance(effect, ItemBound):
        player.items[effect.item_id] = msgspec.structs.replace(
            player.items[effect.item_id], bound=True
        )
    elif isinstance(effect, HealthChanged):
        player.health = effect.health
    elif isinstance(effect, ActiveEffectStarted):
        player.active_effects.pop(effect.effect.source, None)  # newest last
        player.active_effects[effect.effect.source] = effect.effect
    elif isinstance(effect, XpGained):
        player.skills[effect.skill] = effect.total
    elif isinstance(effect, SkillLeveledUp):
        player.skill_levels[effect.skill] = effect.level
    elif isinstance(effect, PlayerLeveledUp):
        player.level = effect.level
    elif isinstance(effect, CompartmentResized):
        cells = player.compartments.setdefault(effect.compartment, [])
        if len(cells) < effect.size:
            cells.extend([None] * (effect.size - len(cells)))
    elif isinstance(effect, GrantRecorded):
        player.grants[effect.key] = effect.version
        while len(player.grants) > GRANT_KEYS_KEPT:
            del player.grants[next(iter(player.grants))]
    player.version += 1
    return player


def apply_all(player: PlayerState, effects: Iterable[AnyEffect]) -> PlayerState:
    for effect in effects:
        apply(player, effect)
    return player


class Mirror:
    """A client-side copy of one player's state, kept exact by applying the same effects.

    ``Mirror(welcome.state)``; then ``apply_effects(version_after, effects)`` for each effects
    reply (``version``) and each ``player.delta`` (``seq``). Batches may arrive out of order:
    a session's own reply is sent as soon as it is durable, while a delta caused by another
    session waits for the next tick, so a reply can overtake an earlier delta. A batch that
    starts past the mirrored version is held until the batches before it arrive.
    ``pending`` is how many are held; if it stays above zero (or ``apply_effects`` returns
    False) something was missed: reconnect with ``resume=mirror.state.version``.
    """

    MAX_PENDING = 64

    def __init__(self, state: PlayerState) -> None:
        self.state = state
        self._held: dict[int, list[AnyEffect]] = {}  # first version of a batch -> batch

    @property
    def pending(self) -> int:
        return len(self._held)

    def apply_effects(self, version_after: int, effects: list[AnyEffect]) -> bool:
        """Apply a batch now, or hold it until it continues the mirrored version.

        Returns False — and changes nothing — when the batch overlaps what the mirror already
        holds, or when ``MAX_PENDING`` batches are already waiting for a gap to close.
        """
        start = version_after - len(effects)
        if start < self.state.version:
            return False
        if start > self.state.version:
            if start in self._held or len(self._held) >= self.MAX_PENDING:
                return False
            self._held[start] = effects
            return True
        apply_all(self.state, effects)
        while self.state.version in self._held:
            apply_all(self.state, self._held.pop(self.state.version))
        return True

    def encoded(self) -> bytes:
        return encode_state(self.state)
