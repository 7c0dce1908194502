"""Does a message meet a step's expectation, and if not, how to show why.

Pure functions over JSON-like values (the messages as ``msgspec.to_builtins(..., str_keys=True)``
makes them, so both encodings look the same). The rules, as ``wsprobe run`` documents them:

- a table matches an object that has each of its keys, each value matching (other keys of
  the object are ignored: a subset match);
- a list matches a list of the same length, element by element; a ``"..."`` element stands
  for any number of elements (``["...", {e = "item_created"}, "..."]``: one of them is an
  ``item_created``);
- anything else must be equal; a number equals the same number (``1 == 1.0``) but a boolean
  only a boolean.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re

ANY_ELEMENTS = "..."
"""In an expected list: any number of elements, of any value."""
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SHORT = 120


@dataclasses.dataclass(frozen=True, slots=True)
class Mismatch:
    path: str
    """``$.effects[0].e``: where in the message."""
    expected: object
    got: object
    missing: bool = False
    """The key is not in the message at all."""
    pattern: bool = False
    """``expected`` is a list with ``"..."``: no arrangement of the elements fitted."""

    def __str__(self) -> str:
        if self.missing:
            return f"{self.path}: missing (expected {short(self.expected)})"
        if self.pattern:
            return (
                f"{self.path}: expected a list like {short(self.expected)} "
                f"('...' = any elements), got {short(self.got)}"
            )
        return f"{self.path}: expected {short(self.expected)}, got {short(self.got)}"


def compact(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=repr)


def short(value: object, limit: int = _SHORT) -> str:
    text = compact(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def child(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if _IDENTIFIER.fullmatch(key) else f"{path}[{json.dumps(key)}]"


def match(expected: object, got: object, path: str = "$") -> list[Mismatch]:
    """Every place where ``got`` does not meet ``expected``; empty when it does."""
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            return [Mismatch(path, expected, got)]
        out: list[Mismatch] = []
        for key, value in expected.items():
            if key not in got:
                out.append(Mismatch(child(path, key), value, None, missing=True))
            else:
                out.extend(match(value, got[key], child(path, key)))
        return out
    if isinstance(expected, list):
        if not isinstance(got, list):
            return [Mismatch(path, expected, got)]
        if ANY_ELEMENTS in expected:
            fits = _fits(expected, got)
            return [] if fits else [Mismatch(path, expected, got, pattern=True)]
        if len(expected) != len(got):
            return [Mismatch(f"{path} length", len(expected), len(got))]
        out = []
        for index, (want, have) in enumerate(zip(expected, got, strict=True)):
            out.extend(match(want, have, child(path, index)))
        return out
    return [] if same(expected, got) else [Mismatch(path, expected, got)]


def same(expected: object, got: object) -> bool:
    """Scalar equality as the rules say: booleans are not numbers."""
    if isinstance(expected, bool) or isinstance(got, bool):
        return type(expected) is type(got) and expected == got
    return expected == got


def _fits(patterns: list[object], items: list[object]) -> bool:
    """Whether ``items`` fit ``patterns`` where ``"..."`` takes any run of elements."""
    # fit[i][j]: patterns[i:] fit items[j:]. Bottom-up, so no recursion depth to worry about.
    rows, cols = len(patterns), len(items)
    fit = [[False] * (cols + 1) for _ in range(rows + 1)]
    fit[rows][cols] = True
    for i in range(rows - 1, -1, -1):
        for j in range(cols, -1, -1):
            if patterns[i] == ANY_ELEMENTS:
                fit[i][j] = fit[i + 1][j] or (j < cols and fit[i][j + 1])
            else:
                fit[i][j] = j < cols and fit[i + 1][j + 1] and not match(patterns[i], items[j])
    return fit[0][0]


def project(expected: object, got: object) -> object:
    """``got`` limited to what ``expected`` names, in its order, so that a diff of the two
    shows only the differences that matter (keys the expectation ignores are left out)."""
    if isinstance(expected, dict) and isinstance(got, dict):
        return {key: project(value, got[key]) for key, value in expected.items() if key in got}
    if (
        isinstance(expected, list)
        and isinstance(got, list)
        and ANY_ELEMENTS not in expected
        and len(expected) == len(got)
    ):
        return [project(want, have) for want, have in zip(expected, got, strict=True)]
    return got


def pretty(value: object) -> list[str]:
    return json.dumps(value, ensure_ascii=False, indent=2, default=repr).splitlines()


def diff(expected: object, got: object) -> list[str]:
    """A unified diff of the expectation and the message (as :func:`project` shows it)."""
    return list(
        difflib.unified_diff(
            pretty(expected), pretty(project(expected, got)), "expected", "got", lineterm=""
        )
    )


def explain(expected: object, got: object, mismatches: list[Mismatch]) -> list[str]:
    """The lines a failed expectation prints: each mismatch, then the diff."""
    lines = [f"  {m}" for m in mismatches]
    lines += ["  " + line for line in diff(expected, got)]
    return lines
