"""Keep a ``protocol.mirror.Mirror`` of the probe's player from the messages it receives.

The probe reads messages as plain dicts (it must show whatever arrives); the tracker converts
the ones that change the player into the protocol's typed messages and applies them, and
says after each whether the mirror still continues the server's version sequence. The
digest is a prefix of the SHA-256 of the mirror's canonical bytes (``encode_state``):
``wsprobe state --digest`` prints the server's, so the two can be compared.
"""

from __future__ import annotations

import hashlib

import msgspec

from protocol.messages import EffectsReply, PlayerDelta, SessionWelcome
from protocol.mirror import Mirror, encode_state
from protocol.model import PlayerState
from tools.wsprobe.client import Message, ProbeError

STATUS_TAG = "wsprobe.mirror"


def state_digest(state: PlayerState) -> str:
    return hashlib.sha256(encode_state(state)).hexdigest()[:16]


def typed_state(welcome: Message) -> PlayerState | None:
    """The welcome's full state as a ``PlayerState`` (None for a resumed welcome).

    Raises:
        ProbeError: the state does not match the protocol's ``PlayerState``.
    """
    try:
        return msgspec.convert(welcome, SessionWelcome, str_keys=True).state
    except msgspec.ValidationError as exc:
        raise ProbeError(f"welcome does not decode as session.welcome: {exc}") from None


class MirrorTracker:
    """A mirror plus bookkeeping: what was applied, and whether a gap was seen."""

    def __init__(self, welcome: Message) -> None:
        state = typed_state(welcome)
        if state is None:
            raise ProbeError("a mirror needs a full-state welcome, not a resumed one")
        self.player_id = welcome.get("player_id")
        self.mirror = Mirror(state)
        self.in_sync = True

    @property
    def version(self) -> int:
        return self.mirror.state.version

    def status(self, after: str, applied: int, **extra: object) -> Message:
        return {
            "t": STATUS_TAG,
            "after": after,
            "applied": applied,
            "version": self.version,
            "in_sync": self.in_sync,
            "digest": state_digest(self.mirror.state),
            **extra,
        }

    def resumed(self, welcome: Message) -> Message:
        """Apply a resumed welcome's effects (after a reconnect with ``resume``).

        Raises:
            ProbeError: the welcome does not decode.
        """
        try:
            typed = msgspec.convert(welcome, SessionWelcome, str_keys=True)
        except msgspec.ValidationError as exc:
            raise ProbeError(f"welcome does not decode: {exc}") from None
        if typed.state is not None:
            self.mirror = Mirror(typed.state)
            self.in_sync = True
            return self.status("session.welcome", 0, reloaded=True)
        effects = typed.effects or []
        self.in_sync = self.mirror.apply_effects(typed.version, effects)
        return self.status("session.welcome", len(effects) if self.in_sync else 0)

    def observe(self, msg: Message) -> Message | None:
        """Apply ``msg`` if it carries effects of this player; return a status line for any
        message that says something about the player's version, else None.

        Raises:
            ProbeError: an effects message does not decode.
        """
        kind = msg.get("t")
        try:
            if kind == "effects":
                reply = msgspec.convert(msg, EffectsReply, str_keys=True)
                return self._apply(str(kind), reply.version, reply)
            if kind == "player.delta":
                delta = msgspec.convert(msg, PlayerDelta, str_keys=True)
                return self._apply(str(kind), delta.seq, delta)
        except msgspec.ValidationError as exc:
            raise ProbeError(f"{kind} does not decode: {exc}") from None
        # Replies and pushes that only report a version are shown beside the mirror's but
        # prove no gap: a cooldown_ready or a stats reply may count effects whose delta or
        # reply is still on its way. An admin grant to one's own player is one of them, and
        # its effects never reach the granting session (they are pushed to the others).
        if kind == "admin.grant_item_reply" and msg.get("player_id") != self.player_id:
            return None
        version = msg.get("seq") if kind == "player.cooldown_ready" else msg.get("version")
        if isinstance(version, int) and kind != "session.welcome":
            return self.status(str(kind), 0, server_version=version)
        return None

    def _apply(self, kind: str, version: int, msg: EffectsReply | PlayerDelta) -> Message:
        effects = msg.effects
        if not self.in_sync or not self.mirror.apply_effects(version, effects):
            self.in_sync = False
            return self.status(kind, 0, server_version=version)
        return self.status(kind, len(effects))
