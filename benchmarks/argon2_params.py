"""argon2id parameter sets, timed on this machine, in-process.

    python -m benchmarks.argon2_params                  # 6 candidates x 3 rounds, ~1.5 min
    python -m benchmarks.argon2_params --rounds 1 --only owasp-m19-t2 --only rfc9106-low-mem

What a login costs the server in password hashing is one ``PasswordHasher.verify`` (the same
work as ``hash``) with the configured parameters (``argon2_memory_kib``, ``argon2_time_cost``,
``argon2_parallelism``; server/domains/accounts/passwords.py). For each candidate:

- **1 thread**: verifies back to back on one thread; time per verify (p50, p99, max) and
  verifies/s.
- **2 threads**: two threads verifying at once (the server's default ``hash_workers`` is 2);
  time per verify and verifies/s together. argon2-cffi releases the GIL while hashing, so two
  threads can use both cores, and the difference to 1 thread shows what the machine gives.
- **Event-loop lag while 2 threads hash**: an asyncio loop in the main thread wakes every
  5 ms and records how late each wake-up was: the GIL is released, so the lag is what
  sharing the cores with the hashes costs a loop (the server's tick runs on such a loop).
  The same loop with nothing hashing is the baseline.

Candidates are timed in rounds (A B C ... A B C ...), so slow drift of a shared machine hits
all alike; the samples of all rounds are pooled. ``memory per hash`` is what one hash in
flight allocates (``m`` KiB); the server holds at most ``hash_workers`` of them at once.

Prints one JSON document on stdout and a table on stderr. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from argon2 import PasswordHasher, Type


@dataclass(frozen=True)
class Candidate:
    name: str
    memory_kib: int
    time_cost: int
    parallelism: int
    source: str


CANDIDATES = [
    Candidate("owasp-m19-t2", 19 * 1024, 2, 1, "OWASP 2nd choice; the server's default"),
    Candidate("owasp-m47-t1", 46 * 1024, 1, 1, "OWASP 1st choice (46 MiB, t=1)"),
    Candidate("owasp-m12-t3", 12 * 1024, 3, 1, "OWASP 3rd choice"),
    Candidate("owasp-m9-t4", 9 * 1024, 4, 1, "OWASP 4th choice"),
    Candidate("owasp-m7-t5", 7 * 1024, 5, 1, "OWASP 5th choice"),
    Candidate("rfc9106-low-mem", 64 * 1024, 3, 4, "RFC 9106 low-memory; argon2-cffi's default"),
]
BY_NAME = {c.name: c for c in CANDIDATES}
PASSWORD = "correct horse battery staple 42"
LAG_PERIOD_S = 0.005


def _hasher(c: Candidate) -> PasswordHasher:
    return PasswordHasher(
        time_cost=c.time_cost,
        memory_cost=c.memory_kib,
        parallelism=c.parallelism,
        hash_len=32,
        salt_len=16,
        type=Type.ID,
    )


def _verify_for(hasher: PasswordHasher, stored: str, seconds: float, out: list[float]) -> None:
    """Verify back to back for ``seconds`` (at least once), appending each duration."""
    end = time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        hasher.verify(stored, PASSWORD)
        t1 = time.perf_counter()
        out.append(t1 - t0)
        if t1 >= end:
            return


def _threads(
    hasher: PasswordHasher, stored: str, seconds: float, n: int
) -> tuple[list[float], float]:
    """``n`` threads verifying at once; every duration, and the wall time they took."""
    outs: list[list[float]] = [[] for _ in range(n)]
    threads = [
        threading.Thread(target=_verify_for, args=(hasher, stored, seconds, outs[i]))
        for i in range(n)
    ]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return [d for o in outs for d in o], wall


async def _lag_while(seconds: float, work: threading.Thread | None) -> list[float]:
    """Wake every LAG_PERIOD_S for ``seconds`` (or until ``work`` ends); how late each
    wake-up was, in seconds."""
    lags: list[float] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    deadline = loop.time() + LAG_PERIOD_S
    while loop.time() < end:
        await asyncio.sleep(max(0.0, deadline - loop.time()))
        lags.append(max(0.0, loop.time() - deadline))
        deadline += LAG_PERIOD_S
        if deadline < loop.time():  # a stall longer than a period: restart the schedule
            deadline = loop.time() + LAG_PERIOD_S
        if work is not None and not work.is_alive():
            break
    return lags


def _lag_run(hasher: PasswordHasher | None, stored: str, seconds: float) -> list[float]:
    if hasher is None:
        return asyncio.run(_lag_while(seconds, None))
    box: list[tuple[list[float], float]] = []
    worker = threading.Thread(target=lambda: box.append(_threads(hasher, stored, seconds, 2)))
    worker.start()
    try:
        return asyncio.run(_lag_while(seconds, worker))
    finally:
        worker.join()


def _machine_busy_s() -> float:
    """Non-idle CPU seconds of the whole machine (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [float(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def _ms(values: list[float]) -> dict[str, float | int]:
    return {
        "n": len(values),
        "p50_ms": round(1000 * statistics.median(values), 2) if values else float("nan"),
        "p99_ms": round(1000 * _pct(values, 0.99), 2),
        "max_ms": round(1000 * max(values), 2) if values else float("nan"),
    }


def run(candidates: list[Candidate], rounds: int, seconds: float) -> dict[str, Any]:
    hashers = {c.name: _hasher(c) for c in candidates}
    stored = {c.name: hashers[c.name].hash(PASSWORD) for c in candidates}
    one: dict[str, list[float]] = {c.name: [] for c in candidates}
    two: dict[str, list[float]] = {c.name: [] for c in candidates}
    two_rate: dict[str, list[float]] = {c.name: [] for c in candidates}
    lag: dict[str, list[float]] = {c.name: [] for c in candidates}
    idle_lag: list[float] = []
    busy0, own0, t0 = _machine_busy_s(), time.process_time(), time.monotonic()
    for r in range(rounds):
        idle_lag += _lag_run(None, "", seconds)
        for c in candidates:
            h, s = hashers[c.name], stored[c.name]
            _verify_for(h, s, 0.0, [])  # touch the memory once, untimed
            _verify_for(h, s, seconds, one[c.name])
            durations, wall = _threads(h, s, seconds, 2)
            two[c.name] += durations
            two_rate[c.name].append(len(durations) / wall)
            lag[c.name] += _lag_run(h, s, seconds)
            print(
                f"  round {r + 1}/{rounds} {c.name:16} 1 thread p50 "
                f"{1000 * statistics.median(one[c.name]):6.1f} ms, 2 threads "
                f"{len(durations) / wall:5.1f}/s",
                file=sys.stderr,
            )
    elapsed = time.monotonic() - t0
    busy, own = _machine_busy_s() - busy0, time.process_time() - own0
    rows = []
    for c in candidates:
        single = one[c.name]
        rows.append(
            {
                **asdict(c),
                "memory_per_hash_mib": round(c.memory_kib / 1024, 1),
                "one_thread": {**_ms(single), "per_s": round(len(single) / sum(single), 1)},
                "two_threads": {
                    **_ms(two[c.name]),
                    "per_s": round(statistics.median(two_rate[c.name]), 1),
                    "per_s_rounds": [round(x, 1) for x in two_rate[c.name]],
                },
                "loop_lag_while_two_threads_hash": _ms(lag[c.name]),
            }
        )
    return {
        "meta": {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
            "rounds": rounds,
            "seconds_per_measure": seconds,
            "lag_period_ms": LAG_PERIOD_S * 1000,
            "elapsed_s": round(elapsed, 1),
            # CPU of everything else on the machine while this ran, % of one core
            "other_load_pct_of_core": round(100.0 * max(0.0, busy - own) / elapsed, 1),
        },
        "loop_lag_idle": _ms(idle_lag),
        "candidates": rows,
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        f"{'candidate':16} {'m MiB':>6} {'t':>2} {'p':>2} | {'1 thread p50':>12} {'p99':>7} "
        f"{'/s':>6} | {'2 threads p50':>13} {'p99':>7} {'/s':>6} | {'loop lag p99':>12} {'max':>7}"
    ]
    for r in result["candidates"]:
        o, t, g = r["one_thread"], r["two_threads"], r["loop_lag_while_two_threads_hash"]
        lines.append(
            f"{r['name']:16} {r['memory_per_hash_mib']:>6} {r['time_cost']:>2} "
            f"{r['parallelism']:>2} | {o['p50_ms']:>12.1f} {o['p99_ms']:>7.1f} {o['per_s']:>6.1f} "
            f"| {t['p50_ms']:>13.1f} {t['p99_ms']:>7.1f} {t['per_s']:>6.1f} "
            f"| {g['p99_ms']:>12.2f} {g['max_ms']:>7.2f}"
        )
    idle = result["loop_lag_idle"]
    lines.append(
        f"(ms per verify; loop lag = lateness of a {LAG_PERIOD_S * 1000:.0f} ms asyncio timer "
        f"while 2 threads hash; with nothing hashing: p99 {idle['p99_ms']:.2f}, "
        f"max {idle['max_ms']:.2f}); other load on the machine meanwhile: "
        f"{result['meta']['other_load_pct_of_core']} % of a core"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.5, help="per measure and round")
    parser.add_argument("--only", action="append", choices=list(BY_NAME), metavar="NAME")
    args = parser.parse_args(argv)
    chosen = [BY_NAME[n] for n in args.only] if args.only else CANDIDATES
    result = run(chosen, args.rounds, args.seconds)
    print(render(result), file=sys.stderr)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
