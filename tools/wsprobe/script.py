"""``wsprobe run FILE``: scripted sessions, and the recorder behind ``wsprobe record``.

A script is a TOML file of steps run in order against one server; the first unmet
expectation stops it with exit 1 and a readable diff. The end-to-end tests and the examples
in ``docs/examples/`` are such scripts.

    wsprobe run docs/examples/tour.toml --url ws://127.0.0.1:8765/ --var who=bob
    wsprobe run FILE --msgpack --quiet        # only failures, on stderr
    wsprobe run FILE --json                   # one JSON line per step
    wsprobe run FILE --check                  # read and check the file only; no connection

The file
========

.. code-block:: toml

    url = "ws://127.0.0.1:8765/"   # optional; --url overrides it
    [vars]                         # optional defaults; --var NAME=VALUE overrides them
    who = "alice"
    [sessions.alice]               # named sessions, each one connection
    token = "dev:${who}"
    [sessions.gm]
    token = "dev-admin:gm"
    [sessions.anonymous]           # no token: connects, never says hello

    [[step]]                       # session defaults to the first declared
    send = "equip"
    body = { item_id = "@cloth_cap", slot = "head" }
    expect = { t = "effects", effects = [{ e = "items_moved" }] }
    capture = { v = "version" }

Top level: ``url``, ``[vars]``, ``[sessions.NAME]`` (key ``token``) and ``[[step]]``; any other
key is an error. A session connects at its first step and, when it has a token, says
``session.hello`` then (a connection opened later does not see pushes caused earlier: give a
session that waits for pushes an early step, e.g. ``hello = true``). Every session keeps a
``protocol.mirror`` copy of its player from every reply and push it receives.

Each step does exactly one of:

``send = "OP"``
    a request by wsprobe short name or full tag (``wsprobe ops``), fields in ``body``.
    ``@me`` and ``@<template>[.<n>]`` values resolve against the session's mirror *now*
    (``tools/wsprobe/ops``); the request is validated with the protocol Struct before it
    is sent (an invalid one is exit 2: use ``raw`` to send those).
``raw = 'TEXT'``
    a message sent exactly as written, no rid added: JSON text on the JSON subprotocol; with
    ``--msgpack`` the same value re-encoded, or the text's bytes if it is not JSON. The reply
    is the one carrying its ``rid``, or an error with ``rid`` null.
``hello = true``
    say ``session.hello`` with the session's token, so the welcome can be checked or
    captured from; only as the session's first step.
``expect_push = "TAG"``
    the session's next unconsumed push must have this tag (waiting for one to arrive).
``wait_push = "TAG"``
    wait for the oldest push with this tag that also meets ``expect``; pushes passed over
    stay queued, in order, for later steps.

and may add:

``session = "NAME"``
    which session (default: the first declared).
``expect = { ... }``
    what the reply or push must match (below). Without ``expect`` or ``expect_error``, a
    request step only requires that the reply is not an ``error``.
``expect_error = "CODE"``
    shorthand for ``expect = { t = "error", code = "CODE" }`` (request steps only).
``capture = { NAME = "JMESPATH", ... }``
    set variables from the reply or push (JMESPath over the message as JSON shows it; a
    capture that finds nothing fails the step).
``timeout = SECONDS``
    for the reply or push (default 5, or ``--timeout``); none in time fails the step.
``note = "TEXT"``
    shown on the step's output line.

Any of these tables may also be written as a sub-table after its step's header
(``[step.body]`` on its own line, then one field per line); TOML arrays may span lines.

Matching (``script_match``): a table matches an object having each of its keys, recursively
(other keys are ignored); a list matches a list of the same length element by element, where
a ``"..."`` element stands for any number of elements; other values must be equal (numbers
by value, booleans only booleans). TOML has no null, so a null cannot be expected.

Variables: ``${name}`` in any string of ``body``, ``raw``, ``expect``, ``expect_error`` and
session tokens is replaced by the variable from ``[vars]``, ``--var`` or an earlier
``capture``; a string that is exactly ``${name}`` takes the value with its type (a captured
int stays an int). ``$${`` writes a literal ``${``. A ``--var`` value takes the type of the
``[vars]`` default it overrides (else it is a string). Every name must be defined before the
step that uses it, which is checked before anything connects.

Output: one line per step on stdout (step number, session, what was sent, what came back,
captures, milliseconds, ok/FAILED), a line when a session connects, and a summary; a failure
on stderr names the step and its line, the mismatching path (``$.effects[0].e: expected
"items_moved", got "item_created"``; each one when there are several), a unified diff of the
expectation and the message (limited to the keys the expectation names), then the whole
message. ``--json`` prints instead one object per step: ``step line session action target
sent received ms ok`` (plus ``captured``, ``problem``), and one per session connected.
``--quiet`` prints only failures. Exit 0: every step passed; 1: the first unmet expectation,
including a reply or push that did not come in time (steps after it did not run); 2: the file
is invalid (its path, step and key named), a session cannot connect, its hello is refused or
its connection closes, or a ``send`` request is invalid.

Recording: :class:`ScriptRecorder` (``script_record``) implements ``common.Recorder`` for
``wsprobe record``; its docstring says what it writes and why that replays.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from tools.wsprobe import common
from tools.wsprobe.common import EXIT_FAILURE, EXIT_OK
from tools.wsprobe.script_format import ScriptError, load_script, parse_var, substitute
from tools.wsprobe.script_record import ScriptRecorder
from tools.wsprobe.script_run import STEP_TIMEOUT_S, Mode, Output, Runner

__all__ = ["ScriptRecorder", "register", "run_file"]


def run_file(
    path: Path,
    options: common.ConnectOptions | None,
    var_args: list[str],
    *,
    mode: Mode = "text",
    timeout: float = STEP_TIMEOUT_S,
    check_only: bool = False,
    url: str | None = None,
) -> int:
    """Run the script at ``path``; the exit code. ``options.url`` is ignored when ``url`` or
    the script gives one (``url`` wins). With ``check_only``, only read and check the file."""
    output = Output(mode)
    try:
        names = [text.partition("=")[0] for text in var_args]
        script = load_script(path, names)
        variables = dict(script.vars)
        variables.update(parse_var(text, script.vars) for text in var_args)
    except ScriptError as exc:
        output.failure(str(exc), [])
        return EXIT_FAILURE
    if check_only:
        return EXIT_OK
    target = url or script.url
    if target is None:
        output.failure(f"{path}: no url: give --url URL, or url = ... in the script", [])
        return EXIT_FAILURE
    target = str(substitute(target, variables))
    base = options or common.ConnectOptions(url=target)
    connect = common.ConnectOptions(
        url=target,
        encoding=base.encoding,
        ca_file=base.ca_file,
        origin=base.origin,
        open_timeout=base.open_timeout,
    )
    runner = Runner(script, connect, variables, output, timeout)
    return asyncio.run(runner.run())


def _cmd_run(args: argparse.Namespace) -> int:
    mode: Mode = "quiet" if args.quiet else "json" if args.json else "text"
    options = common.options_from_args(args, url=args.url or "")
    return run_file(
        args.file,
        options,
        args.var,
        mode=mode,
        timeout=args.timeout,
        check_only=args.check,
        url=args.url,
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``run`` subcommand."""
    run = sub.add_parser(
        "run",
        help="run a scripted session: a TOML file of steps and expectations",
        description="Run a script of steps (send, expect, wait for pushes, capture) against "
        "a Gearhall server; exit 0 if every expectation held, 1 at the first that did not, 2 if "
        "the script is invalid or a session fails. The format is documented in "
        "tools/wsprobe/script.py.",
    )
    run.add_argument("file", type=Path, help="the script (TOML)")
    run.add_argument("--url", help="ws://host:port/ (overrides the script's url)")
    common.add_connection_arguments(run, url=False)
    run.add_argument(
        "--var",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a variable (overrides [vars]); repeatable",
    )
    run.add_argument(
        "--timeout",
        type=common.positive_float,
        default=STEP_TIMEOUT_S,
        metavar="SECONDS",
        help=f"how long a step waits for its reply or push (default {STEP_TIMEOUT_S:g})",
    )
    run.add_argument("--check", action="store_true", help="check the file only; connect nowhere")
    output = run.add_mutually_exclusive_group()
    output.add_argument("--quiet", action="store_true", help="print only failures (stderr)")
    output.add_argument("--json", action="store_true", help="one JSON line per step on stdout")
    run.set_defaults(func=_cmd_run)
