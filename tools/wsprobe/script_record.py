"""``wsprobe record``'s half: turn a live session into a script that ``wsprobe run`` replays.

The goal is a file that replays green against a *fresh* player, so what is written is what
stays the same from one player to the next:

- a request becomes a ``send`` step with its fields as typed (``@refs`` kept); a literal item
  id is rewritten as the ``@template.n`` reference naming the same item, and the player's own
  id as ``@me``, when the welcome was seen (the recorder keeps a mirror of the player);
- its reply becomes an expectation on the message type only — the error code, and for an
  ``effects`` reply the effect kinds in order — never on ids, versions or deadlines;
- a request that is not a known operation, or that the server refused as ``bad_request``, is
  written as a ``raw`` step, byte for byte what was sent (with a rid);
- a push becomes a ``wait_push`` step only when the replay will cause it again: a
  ``player.cooldown_ready`` whose cooldown a recorded step started (with a timeout long
  enough for that cooldown), and the ``player.delta`` of a recorded admin grant to the
  recording player itself. Other pushes (other sessions' changes) are written as comments:
  a replay cannot cause them. A ``wait_push`` is also what makes a replay wait for a cooldown
  the live session waited for, so the step after it is not refused as ``cooldown_active``.

The token goes to ``[vars] token`` so a replay can pick another player
(``--var token=dev:someone-new``).
"""

from __future__ import annotations

import datetime
import itertools
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from tools.wsprobe import ops
from tools.wsprobe.client import Message, ProbeError
from tools.wsprobe.common import ConnectOptions
from tools.wsprobe.mirror import MirrorTracker
from tools.wsprobe.script_format import toml_expressible, toml_key, toml_string, toml_value
from tools.wsprobe.script_run import STEP_TIMEOUT_S, summarize

SESSION = "main"
COOLDOWN_MARGIN_S = 2.0


@dataclass(eq=False)  # entries are found by identity: two may read the same
class _Entry:
    step: dict[str, object] | None
    comments: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Grant:
    entry: _Entry
    version: int
    item_ids: frozenset[int]


@dataclass(frozen=True, slots=True)
class _Delta:
    entry: _Entry
    seq: object
    created: frozenset[int]
    kinds: tuple[str, ...]


def expectation(reply: Mapping[str, object]) -> dict[str, object]:
    """What a recorded step expects of a reply like ``reply``: its type, error code, and
    effect kinds — what a fresh player's replay gets too."""
    tag = reply.get("t")
    if tag == "error":
        return {"expect_error": str(reply.get("code"))}
    expect: dict[str, object] = {"t": str(tag)}
    effects = reply.get("effects")
    if tag == "effects" and isinstance(effects, list):
        expect["effects"] = [{"e": str(e.get("e"))} for e in effects if isinstance(e, dict)]
    return {"expect": expect}


def _created_ids(effects: object) -> frozenset[int]:
    if not isinstance(effects, list):
        return frozenset()
    return frozenset(
        e["item"]["id"]
        for e in effects
        if isinstance(e, dict)
        and e.get("e") == "item_created"
        and isinstance(e.get("item"), dict)
        and isinstance(e["item"].get("id"), int)
    )


class ScriptRecorder:
    """A :class:`tools.wsprobe.common.Recorder` writing a ``wsprobe run`` script to ``path``
    on :meth:`close`. It never raises on odd input: the session it records matters more."""

    def __init__(
        self,
        path: Path,
        options: ConnectOptions,
        token: str | None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.clock = clock
        self.options = options
        self.token = token
        self.started = datetime.datetime.now().astimezone()
        self._entries: list[_Entry] = []
        self._tracker: MirrorTracker | None = None
        self._cooldowns: dict[str, float] = {}
        """Cooldown key -> when a recorded reply started it (monotonic seconds)."""
        self._grants: list[_Grant] = []
        self._deltas: list[_Delta] = []
        """Deltas no recorded grant explains (yet: a delta may arrive before its reply)."""
        self._rids = itertools.count(1)
        self._closed = False

    # --- Recorder ---------------------------------------------------------------------------

    def request(self, msg: Message, reply: Message) -> None:
        if msg.get("t") == "session.hello":
            self._hello(msg, reply)
            return
        step = self._send_step(msg, reply) or self._raw_step(msg, reply)
        entry = _Entry(step)
        self._entries.append(entry)
        self._observe(reply)
        if reply.get("t") == "effects":
            self._note_cooldowns(reply.get("effects"))
        elif reply.get("t") == "admin.grant_item_reply" and not reply.get("replayed"):
            self._note_grant(entry, reply)

    def push(self, msg: Message) -> None:
        self._observe(msg)
        tag = msg.get("t")
        if tag == "player.cooldown_ready":
            self._cooldown_ready(msg)
        elif tag == "player.delta":
            entry = _Entry(None, [self._unreplayed(msg, "another session caused it")])
            effects = msg.get("effects")
            kinds = (
                tuple(str(e.get("e")) for e in effects if isinstance(e, dict))
                if isinstance(effects, list)
                else ()
            )
            delta = _Delta(entry, msg.get("seq"), _created_ids(effects), kinds)
            grant = next((g for g in self._grants if self._explains(g, delta)), None)
            if grant is None:
                self._entries.append(entry)
                self._deltas.append(delta)
            else:
                self._wait_for_delta(grant, delta)
        else:
            self._entries.append(_Entry(None, [self._unreplayed(msg, "not a push replays make")]))

    def close(self) -> None:
        """Write the script (once; later calls do nothing).

        Raises:
            OSError: the file cannot be written.
        """
        if self._closed:
            return
        self._closed = True
        self.path.write_text(self.render(), encoding="utf-8")

    # --- what the file says ---------------------------------------------------------------------

    def render(self) -> str:
        when = self.started.strftime("%Y-%m-%d %H:%M %Z").strip()
        lines = [
            f"# Recorded by `wsprobe record` on {when} from {_one_line(self.options.url)}.",
            f"# Replay: wsprobe run {_one_line(self.path.name)}"
            + (" --msgpack" if self.options.encoding == "msgpack" else "")
            + " [--url URL] [--var token=dev:someone-new]",
            "# Expectations are on message types, error codes and effect kinds, never on ids,",
            "# so a replay with a fresh player passes as well.",
            f"url = {toml_string(self.options.url)}",
            "",
        ]
        if self.token is not None:
            lines += ["[vars]", f"token = {toml_string(self.token)}", ""]
        lines.append(f"[sessions.{SESSION}]")
        lines.append('token = "${token}"' if self.token is not None else "# no token: no hello")
        for entry in self._entries:
            lines.append("")
            lines += [f"# {_one_line(text)}" for text in entry.comments]
            if entry.step is not None:
                lines.append("[[step]]")
                lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in entry.step.items()]
        return "\n".join(lines) + "\n"

    # --- requests ------------------------------------------------------------------------------

    def _hello(self, msg: Message, reply: Message) -> None:
        if reply.get("t") != "session.welcome":
            self._entries.append(_Entry(None, [f"session.hello refused: {summarize(reply)}"]))
            return
        token = msg.get("token")
        if isinstance(token, str) and self.token is None and not self._entries:
            self.token = token
        # A reconnect (``resume``) is not replayed: the replay's one connection never broke.
        try:
            if reply.get("resumed") and self._tracker is not None:
                self._tracker.resumed(reply)
            else:
                self._tracker = MirrorTracker(reply)
        except ProbeError:
            self._tracker = None

    def _send_step(self, msg: Message, reply: Message) -> dict[str, object] | None:
        """The ``send`` step for ``msg``, or None when only a ``raw`` step says it exactly."""
        try:
            op = ops.find(str(msg.get("t")))
        except ops.OperationError:
            return None
        if reply.get("t") == "error" and reply.get("code") == "bad_request":
            return None  # not a valid request: replay exactly what was sent
        names = {f.name for f in op.fields}
        body: dict[str, object] = {}
        for key, value in msg.items():
            if key == "t" or value is None:  # None: every nullable field defaults to it
                continue
            if key not in names:
                return None
            typed = self._reference(key, _typed(value))
            if not toml_expressible(typed):
                return None
            body[key] = typed
        step: dict[str, object] = {"send": op.name}
        if body:
            step["body"] = body
        step.update(expectation(reply))
        return step

    def _raw_step(self, msg: Message, reply: Message) -> dict[str, object]:
        wire = {**msg, "rid": next(self._rids)}
        raw = msgspec.json.encode(wire).decode()
        return {"raw": raw, **expectation(reply)}

    def _reference(self, key: str, value: object) -> object:
        """A literal item id as the ``@template.n`` naming the same item (the n-th lowest id
        of its template, as ``ops.resolve_refs`` counts), the player's id as ``@me``."""
        tracker = self._tracker
        if tracker is None or not isinstance(value, int) or isinstance(value, bool):
            return value
        if key == "player_id":
            return "@me" if value == tracker.player_id else value
        if key != "item_id" and not key.endswith("_item_id"):
            return value
        items = tracker.mirror.state.items
        item = items.get(value)
        if item is None:
            return value
        same = sorted(i for i, other in items.items() if other.template == item.template)
        n = same.index(value)
        return f"@{item.template}" + (f".{n}" if n else "")

    def _observe(self, msg: Message) -> None:
        if self._tracker is None:
            return
        try:
            self._tracker.observe(msg)
        except ProbeError:
            self._tracker = None

    # --- pushes --------------------------------------------------------------------------------

    def _note_cooldowns(self, effects: object) -> None:
        if not isinstance(effects, list):
            return
        now = self.clock()
        for effect in effects:
            if isinstance(effect, dict) and effect.get("e") == "cooldown_started":
                self._cooldowns[str(effect.get("key"))] = now

    def _cooldown_ready(self, msg: Message) -> None:
        key = str(msg.get("key"))
        started = self._cooldowns.pop(key, None)
        if started is None:
            self._entries.append(
                _Entry(None, [self._unreplayed(msg, "its cooldown started before recording")])
            )
            return
        step: dict[str, object] = {"wait_push": "player.cooldown_ready", "expect": {"key": key}}
        # The push comes when the cooldown ends, so the time since it started is (nearly)
        # the cooldown's length; a replay reaches this step no earlier than that start.
        needed = math.ceil(self.clock() - started + COOLDOWN_MARGIN_S)
        if needed > STEP_TIMEOUT_S:
            step["timeout"] = float(needed)
        self._entries.append(_Entry(step))

    def _note_grant(self, entry: _Entry, reply: Message) -> None:
        version, ids = reply.get("version"), reply.get("item_ids")
        if not isinstance(version, int) or not isinstance(ids, list):
            return
        grant = _Grant(entry, version, frozenset(i for i in ids if isinstance(i, int)))
        self._grants.append(grant)
        for delta in [d for d in self._deltas if self._explains(grant, d)]:
            self._deltas.remove(delta)
            self._entries.remove(delta.entry)
            self._wait_for_delta(grant, delta)

    @staticmethod
    def _explains(grant: _Grant, delta: _Delta) -> bool:
        """The delta is this grant's effects reaching the granting session (it granted to
        its own player): same version, and the items it created are the grant's."""
        return (
            delta.seq == grant.version and bool(delta.created) and delta.created <= grant.item_ids
        )

    def _wait_for_delta(self, grant: _Grant, delta: _Delta) -> None:
        """Wait for the delta right after its grant: where the replay causes it."""
        step: dict[str, object] = {
            "wait_push": "player.delta",
            "expect": {"effects": [{"e": kind} for kind in delta.kinds]},
        }
        at = self._entries.index(grant.entry) + 1
        while at < len(self._entries) and self._is_wait_after_grant(self._entries[at]):
            at += 1  # several deltas of one grant keep their order
        self._entries.insert(at, _Entry(step))

    @staticmethod
    def _is_wait_after_grant(entry: _Entry) -> bool:
        return entry.step is not None and entry.step.get("wait_push") == "player.delta"

    @staticmethod
    def _unreplayed(msg: Message, why: str) -> str:
        return f"push {summarize(msg)}" + (f": not replayed ({why})" if why else "")


def _one_line(text: str) -> str:
    """``text`` fit for a TOML comment: no line breaks or other control characters."""
    return "".join(c if c >= " " and c != "\x7f" else " " for c in text)


def _typed(value: object) -> object:
    """A field typed as text (``qty=2`` at the prompt) as the number or boolean it means."""
    if isinstance(value, str) and not value.startswith("@"):
        try:
            parsed = msgspec.json.decode(value)
        except msgspec.DecodeError:
            return value
        if isinstance(parsed, bool | int | float):
            return parsed
    return value
