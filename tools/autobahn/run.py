"""Run the Autobahn|Testsuite fuzzing client against each Gearhall transport.

    python -m tools.autobahn.run                        # cases 1-10, websockets and picows
    python -m tools.autobahn.run --transport picows     # one transport
    python -m tools.autobahn.run --cases all            # everything but compression (12, 13)
    python -m tools.autobahn.run --cases all --compression
    python -m tools.autobahn.run --cases 7.1.5,9.3.*    # wstest patterns
    python -m tools.autobahn.install                    # only install wstest

For each transport it installs wstest if needed (:mod:`tools.autobahn.install`), starts
``gearhall serve`` with the test-only echo endpoint (``GEARHALL_ECHO_ENDPOINT=1``,
``GEARHALL_TRANSPORT``) on a free port, its own embedded Postgres under
``var/autobahn/data`` (or ``--database-url``), waits for ``/healthz``, runs
``wstest -m fuzzingclient`` against ``ws://127.0.0.1:PORT/echo``, stops the server
(SIGTERM) and judges ``var/autobahn/reports/<transport>/index.json``
(:mod:`tools.autobahn.summary`). The JSON verdict goes to stdout (and ``--json-out``), the
table to stderr. Exit status: 0 pass, 1 a FAILED case not allowed (or a run that did not
finish, or a server that did not exit 0 on SIGTERM), 2 wstest could not be installed.

Limits. The echo endpoint enforces the server's own limits in the same code as the game
protocol (``max_frame_bytes`` is the largest message, over it closes 1009). Autobahn's
section 9 sends messages of up to 16 MiB, and 4 MiB messages in up to 65,536 fragments; the
production values (64 KiB; websockets' own cap of 4,096 fragments a message,
``WEBSOCKETS_MAX_FRAGMENTS``) would close those cases with 1009 and report them FAILED,
which tests the limit, not the protocol. So the run raises both (``--max-frame-bytes``,
default 32 MiB as in the websockets project's own compliance server; ``--max-fragments``,
default 131,072; 0 keeps the library's default) and the same code paths enforce the higher
values. Everything else (timeouts, queues, pings) keeps the production defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, get_args

from server.config import TransportName
from tools.autobahn.install import CACHE, ROOT, InstallError, install, python2_env
from tools.autobahn.summary import load_results, render_table, summarise

TRANSPORTS: tuple[str, ...] = get_args(TransportName)
CI_CASES = "1-10"
COMPRESSION_CASES = ["12.*", "13.*"]  # permessage-deflate: the server runs with it off
DEFAULT_MAX_FRAME_BYTES = 2**25
DEFAULT_MAX_FRAGMENTS = 2**17
START_TIMEOUT_S = 120.0  # the first start runs initdb for the embedded Postgres
STOP_TIMEOUT_S = 30.0


class RunError(RuntimeError):
    """The run did not produce a report: the server did not start, or wstest failed or hung.
    The message has the tail of the relevant log."""


def parse_cases(spec: str, compression: bool) -> tuple[list[str], list[str]]:
    """``--cases`` -> wstest's ``cases`` and ``exclude-cases``.

    ``1-10`` (or any ``A-B`` of sections) is every case of those sections, ``all`` every
    case; otherwise a comma-separated list of sections (``9``) and wstest patterns
    (``7.1.5``, ``9.3.*``).
    Compression cases are excluded unless ``compression``.
    """
    spec = spec.strip()
    if spec == "all":
        cases = ["*"]
    elif "-" in spec and spec.replace("-", "").isdigit():
        first, last = (int(n) for n in spec.split("-", 1))
        cases = [f"{n}.*" for n in range(first, last + 1)]
    else:
        patterns = [p.strip() for p in spec.split(",") if p.strip()]
        cases = [f"{p}.*" if p.isdigit() else p for p in patterns]
    exclude = [] if compression else list(COMPRESSION_CASES)
    return cases, exclude


def free_port() -> int:
    """A port nothing listens on now (another process could take it first; unlikely)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


@dataclass
class EchoServer:
    """``gearhall serve`` with the echo endpoint, as a subprocess. Use ``with``."""

    transport: str
    log_path: Path
    data_dir: Path
    database_url: str | None
    max_frame_bytes: int
    max_fragments: int
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/echo"

    def env(self) -> dict[str, str]:
        # Nothing of the caller's Gearhall configuration leaks in; the rest is production
        # defaults but for the two limits (see the module docstring).
        env = {k: v for k, v in os.environ.items() if not k.startswith("GEARHALL_")}
        env.update(
            GEARHALL_TRANSPORT=self.transport,
            GEARHALL_ECHO_ENDPOINT="1",
            GEARHALL_MAX_FRAME_BYTES=str(self.max_frame_bytes),
            GEARHALL_LOG_LEVEL="warning",
            PYTHONUNBUFFERED="1",
        )
        if self.max_fragments:
            env["WEBSOCKETS_MAX_FRAGMENTS"] = str(self.max_fragments)
        if self.database_url:
            env["GEARHALL_DATABASE_URL"] = self.database_url
        return env

    def start(self) -> None:
        """Spawn and wait for ``/healthz``.

        Raises:
            RunError: it exited, or did not answer before the deadline.
        """
        self.port = free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--data-dir", str(self.data_dir)]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._healthy():
            if self.proc.poll() is not None:
                raise RunError(
                    f"{self.transport} server exited with {self.proc.returncode} while "
                    f"starting:\n{_tail(self.log_path)}"
                )
            if time.monotonic() > deadline:
                raise RunError(
                    f"{self.transport} server not healthy after {START_TIMEOUT_S:.0f}s:\n"
                    f"{_tail(self.log_path)}"
                )
            time.sleep(0.1)  # polling: the server offers no other readiness signal

    def _healthy(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.port}/healthz"
            with urllib.request.urlopen(url, timeout=2.0) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> int | None:
        """SIGTERM, wait, SIGKILL if it is still up; the exit code (None if killed)."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None

    def __enter__(self) -> EchoServer:
        try:
            self.start()
        except BaseException:
            self.stop()  # it may be up but not healthy: never leave it behind
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def run_wstest(
    wstest: Path,
    *,
    agent: str,
    url: str,
    cases: list[str],
    exclude: list[str],
    outdir: Path,
    timeout_s: float,
) -> float:
    """One fuzzing-client run into ``outdir``; its wall-clock seconds.

    Raises:
        RunError: wstest failed or did not finish within ``timeout_s``.
    """
    spec = {
        "outdir": str(outdir),
        "servers": [{"agent": agent, "url": url}],
        "cases": cases,
        "exclude-cases": exclude,
        "exclude-agent-cases": {},
    }
    spec_path = outdir / "fuzzingclient.json"
    spec_path.write_text(json.dumps(spec, indent=2) + "\n")
    log_path = outdir / "wstest.log"
    # Python 2's cryptography warns at every import: noise in the log, nothing to act on.
    env = python2_env(PYTHONWARNINGS="ignore")
    started = time.monotonic()
    with log_path.open("wb") as log:
        try:
            done = subprocess.run(
                [str(wstest), "--mode", "fuzzingclient", "--spec", str(spec_path)],
                cwd=outdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise RunError(
                f"wstest did not finish in {timeout_s:.0f}s:\n{_tail(log_path)}"
            ) from None
    if done.returncode != 0 or not (outdir / "index.json").is_file():
        raise RunError(f"wstest exited with {done.returncode}:\n{_tail(log_path)}")
    return time.monotonic() - started


def run_transport(
    transport: str,
    wstest: Path,
    cases: list[str],
    exclude: list[str],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Start the server, fuzz it, stop it, judge the report."""
    outdir = Path(args.reports).resolve() / transport
    outdir.mkdir(parents=True, exist_ok=True)
    for old in outdir.iterdir():  # a report left from an earlier run must not be read
        if old.is_file():
            old.unlink()
    server = EchoServer(
        transport=transport,
        log_path=outdir / "server.log",
        data_dir=Path(args.data_dir).resolve(),
        database_url=args.database_url,
        max_frame_bytes=args.max_frame_bytes,
        max_fragments=args.max_fragments,
    )
    print(f"autobahn: {transport}: cases {' '.join(cases)}", file=sys.stderr, flush=True)
    try:
        with server:
            seconds = run_wstest(
                wstest,
                agent=transport,
                url=server.url,
                cases=cases,
                exclude=exclude,
                outdir=outdir,
                timeout_s=args.timeout,
            )
        summary = summarise(transport, load_results(outdir, transport))
    except (RunError, OSError, KeyError, ValueError) as exc:
        return {"transport": transport, "ok": False, "error": str(exc), "report_dir": str(outdir)}
    summary["wstest_seconds"] = round(seconds, 1)
    # 0 after SIGTERM; anything else (it crashed during the run, or had to be killed) fails.
    status = server.proc.returncode if server.proc else None
    summary["server_exit_status"] = status
    summary["ok"] = summary["ok"] and status == 0
    summary["report_dir"] = str(outdir)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.autobahn.run",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument(
        "--transport",
        action="append",
        choices=TRANSPORTS,
        help="repeatable; default: every transport",
    )
    parser.add_argument(
        "--cases", default=CI_CASES, help="'1-10' (default, CI), 'all', or wstest patterns"
    )
    parser.add_argument(
        "--compression", action="store_true", help="also run 12.* and 13.* (permessage-deflate)"
    )
    parser.add_argument("--max-frame-bytes", type=int, default=DEFAULT_MAX_FRAME_BYTES)
    parser.add_argument(
        "--max-fragments",
        type=int,
        default=DEFAULT_MAX_FRAGMENTS,
        help="WEBSOCKETS_MAX_FRAGMENTS for the server; 0 keeps the library default",
    )
    parser.add_argument("--database-url", help="use this database, not an embedded Postgres")
    parser.add_argument("--data-dir", default=str(CACHE / "data"), help="embedded Postgres home")
    parser.add_argument(
        "--reports", default=str(CACHE / "reports"), help="one folder per transport"
    )
    parser.add_argument("--python2", help="the Python 2.7 to install wstest with")
    parser.add_argument("--timeout", type=float, help="seconds per wstest run")
    parser.add_argument("--json-out", type=Path, help="also write the JSON verdict here")
    args = parser.parse_args(argv)
    cases, exclude = parse_cases(args.cases, args.compression)
    if args.timeout is None:
        args.timeout = 300.0 if args.cases == CI_CASES else 3600.0

    started = time.monotonic()
    try:
        wstest = install(python2=args.python2)
    except InstallError as exc:
        print(f"autobahn: {exc}", file=sys.stderr)
        return 2
    install_s = time.monotonic() - started
    summaries = [
        run_transport(transport, wstest, cases, exclude, args)
        for transport in args.transport or TRANSPORTS
    ]
    result = {
        "ok": all(s["ok"] for s in summaries),
        "cases": cases,
        "exclude_cases": exclude,
        "limits": {
            "max_frame_bytes": args.max_frame_bytes,
            "websockets_max_fragments": args.max_fragments or "library default",
        },
        "install_seconds": round(install_s, 1),
        "total_seconds": round(time.monotonic() - started, 1),
        "transports": summaries,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    print(render_table(summaries), file=sys.stderr)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
