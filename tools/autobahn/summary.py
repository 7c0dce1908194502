"""Read a fuzzing-client report (``index.json`` and the per-case files) and judge it.

wstest rates each case twice: ``behavior`` (OK, NON-STRICT, INFORMATIONAL, UNIMPLEMENTED,
FAILED) and ``behaviorClose`` (the closing handshake: OK, INFORMATIONAL, FAILED, WRONG CODE,
UNCLEAN, ...). A run passes when no case is FAILED except those in
:data:`ALLOWED_FAILURES` for that transport, each with the reason it is accepted.
NON-STRICT is a pass (the case is stricter than RFC 6455) but is listed with the failures,
so a change in it is seen.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BEHAVIORS = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")
LISTED = ("FAILED", "NON-STRICT")
CLOSE_OK = ("OK", "INFORMATIONAL")
_TAG = re.compile(r"<[^>]+>")  # case descriptions carry HTML (<b>RSV = 7</b>)

# Transport -> case id -> why the FAILED result is accepted. An entry here must cite who
# documented the deviation; anything else that fails, fails the run.
ALLOWED_FAILURES: dict[str, dict[str, str]] = {
    "websockets": {
        "7.1.5": (
            "documented by the websockets maintainers (compliance/README.rst, 'Conformance "
            "notes'): a close frame in the middle of a fragmented message is a protocol error "
            "to websockets, so it answers 1002 where the case expects its own 1000 echoed; "
            "RFC 6455 says an endpoint 'typically' echoes the code, it need not"
        ),
    },
    # Everything else on picows is our adapter's code, so each other failure is ours to fix.
    "picows": {
        "7.1.2": (
            "inside picows 2.3.1 (the latest release): its frame parser reads ahead and "
            "rejects a second CLOSE ('Received CLOSE for the second time', picows.pyx, "
            "_get_next_frame_impl) with its own 1002 before the first CLOSE reaches the "
            "adapter's WSListener, so the adapter cannot echo 1000 first; the connection "
            "still closes at once, only the code differs"
        ),
    },
}


@dataclass(frozen=True, slots=True)
class CaseResult:
    id: str
    behavior: str
    behavior_close: str
    remote_close_code: int | None
    duration_ms: int
    description: str = ""
    expectation: str = ""
    result: str = ""
    result_close: str = ""
    remote_close_reason: str | None = None


def case_key(case_id: str) -> tuple[int, ...]:
    """``"9.10.2"`` -> ``(9, 10, 2)``: Autobahn's order, not the string order."""
    return tuple(int(part) for part in case_id.split("."))


def load_results(report_dir: Path, agent: str) -> list[CaseResult]:
    """Every case of ``agent`` in ``report_dir/index.json``, in case order; the listed ones
    (FAILED, NON-STRICT, or a close that is not OK) with the details of their case file.

    Raises:
        FileNotFoundError: no ``index.json`` (wstest did not finish).
        KeyError: ``agent`` is not in it.
        ValueError: a file is not the JSON wstest writes.
    """
    index: dict[str, dict[str, Any]] = json.loads((report_dir / "index.json").read_text())[agent]
    results = []
    for case_id in sorted(index, key=case_key):
        entry = index[case_id]
        case = CaseResult(
            id=case_id,
            behavior=entry["behavior"],
            behavior_close=entry["behaviorClose"],
            remote_close_code=entry.get("remoteCloseCode"),
            duration_ms=int(entry.get("duration") or 0),
        )
        if _listed(case):
            detail: dict[str, Any] = json.loads((report_dir / entry["reportfile"]).read_text())
            case = CaseResult(
                id=case.id,
                behavior=case.behavior,
                behavior_close=case.behavior_close,
                remote_close_code=case.remote_close_code,
                duration_ms=case.duration_ms,
                description=_TAG.sub("", detail.get("description") or ""),
                expectation=_TAG.sub("", detail.get("expectation") or ""),
                result=detail.get("result") or "",
                result_close=detail.get("resultClose") or "",
                remote_close_reason=detail.get("remoteCloseReason"),
            )
        results.append(case)
    return results


def _listed(case: CaseResult) -> bool:
    return case.behavior in LISTED or case.behavior_close not in CLOSE_OK


def summarise(
    transport: str, results: list[CaseResult], allowed: dict[str, str] | None = None
) -> dict[str, Any]:
    """The JSON-ready verdict for one transport's run."""
    allowed = ALLOWED_FAILURES.get(transport, {}) if allowed is None else allowed
    failed = [c.id for c in results if c.behavior == "FAILED"]
    unexpected = [case_id for case_id in failed if case_id not in allowed]
    behavior = Counter(c.behavior for c in results)
    return {
        "transport": transport,
        "ok": bool(results) and not unexpected,
        "cases": len(results),
        "behavior": {b: behavior.get(b, 0) for b in BEHAVIORS}
        | {b: n for b, n in behavior.items() if b not in BEHAVIORS},
        "behaviorClose": dict(sorted(Counter(c.behavior_close for c in results).items())),
        "failed_unexpected": unexpected,
        "failed_allowed": {case_id: allowed[case_id] for case_id in failed if case_id in allowed},
        # Allowed but no longer failing (or not run): the entry may be stale.
        "allowed_not_failed": sorted(set(allowed) - set(failed), key=case_key),
        "listed": [asdict(c) for c in results if _listed(c)],
    }


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def render_table(summaries: list[dict[str, Any]]) -> str:
    """What a person reads: counts per transport, then each listed case with the reason."""
    lines = []
    head = f"{'transport':<11} {'cases':>5} " + " ".join(f"{b:>13}" for b in BEHAVIORS)
    lines += [head, "-" * len(head)]
    for s in summaries:
        if "error" in s:
            lines.append(f"{s['transport']:<11} ERROR: {s['error'].splitlines()[0]}")
            continue
        counts = " ".join(f"{s['behavior'].get(b, 0):>13}" for b in BEHAVIORS)
        lines.append(f"{s['transport']:<11} {s['cases']:>5} {counts}")
    for s in summaries:
        if "error" in s:
            lines += ["", f"== {s['transport']}: ERROR", s["error"]]
            continue
        problems = []
        if s["failed_unexpected"]:
            problems.append(f"FAILED, not allowed: {', '.join(s['failed_unexpected'])}")
        if s.get("server_exit_status", 0) != 0:
            problems.append(f"server exit status {s['server_exit_status']} after SIGTERM")
        verdict = "PASS" if s["ok"] else f"FAIL ({'; '.join(problems) or 'no cases ran'})"
        closes = ", ".join(f"{k} {v}" for k, v in s["behaviorClose"].items())
        lines += ["", f"== {s['transport']}: {verdict}; close behaviour: {closes}"]
        for c in s["listed"]:
            code = c["remote_close_code"]
            reason = f" {c['remote_close_reason']!r}" if c["remote_close_reason"] else ""
            lines.append(
                f"  {c['id']:<8} {c['behavior']:<10} close {c['behavior_close']:<10} "
                f"server sent {code}{reason}: {_clip(c['description'], 70)}"
            )
            if c["behavior"] == "FAILED" or c["behavior_close"] not in CLOSE_OK:
                lines.append(f"           result: {_clip(c['result'] or c['result_close'], 90)}")
            if c["id"] in s["failed_allowed"]:
                lines.append(f"           allowed: {_clip(s['failed_allowed'][c['id']], 90)}")
        if s["allowed_not_failed"]:
            lines.append(f"  allowed but not FAILED here: {', '.join(s['allowed_not_failed'])}")
    return "\n".join(lines)
