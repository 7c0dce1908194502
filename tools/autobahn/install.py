"""Install Autobahn|Testsuite (``wstest``) into a Python 2.7 virtualenv under a cache folder.

wstest runs on Python 2.7 only. The interpreter is found (:func:`find_python2`), not
installed: pyenv's build, or ``python2.7`` on PATH. Python 2.7 has no ``venv``, so the
project's Python 3 runs virtualenv 20.21.1 (the last that makes Python 2 environments,
installed with ``--target`` into ``CACHE/bootstrap``) to create ``CACHE/venv``, then its pip
installs the pinned ``requirements-py27.txt`` from PyPI.

A stamp (``CACHE/venv/.installed``) records the requirement files' digests and the
interpreter; while it matches, :func:`install` returns at once. It is written last, so an
interrupted install is redone from scratch. A lock file serialises concurrent installs.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CACHE = ROOT / "var" / "autobahn"
REQUIREMENTS = HERE / "requirements-py27.txt"
BOOTSTRAP_REQUIREMENTS = HERE / "requirements-bootstrap.txt"
PIP_TIMEOUT_S = 900.0

INSTALL_HINT = (
    "wstest (Autobahn|Testsuite) needs Python 2.7 and none was found (looked in "
    "$PYENV_ROOT/versions/2.7*/bin and for python2.7 / python2 on PATH). This machine image "
    "ships pyenv's 2.7.18 (~/.pyenv/versions/2.7.18); elsewhere `pyenv install 2.7.18`, or "
    "Debian's package (bookworm has none; bullseye has): add `deb http://deb.debian.org/debian "
    "bullseye main` to the APT sources, `apt-get update && apt-get install python2.7 "
    "python2.7-dev`. Or name one with --python2 PATH or AUTOBAHN_PYTHON2=PATH."
)


class InstallError(RuntimeError):
    """wstest could not be installed: this machine lacks Python 2.7, or a registry or a
    build step failed (the message carries the tail of the install log)."""


Log = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _candidates(explicit: str | None) -> Iterator[Path]:
    if explicit:
        yield Path(explicit)
        return
    if env := os.environ.get("AUTOBAHN_PYTHON2"):
        yield Path(env)
        return
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    # Newest 2.7.x first. pyenv's PATH shim is not enough: it only answers for the
    # selected pyenv version, which is a Python 3 here.
    found = pyenv_root.glob("versions/2.7*/bin/python2.7")
    yield from sorted(found, key=lambda p: _version_key(p.parents[1].name), reverse=True)
    # Every match on PATH, not only the first: pyenv's shim may come first and fail.
    for folder in os.get_exec_path():
        for name in ("python2.7", "python2"):
            yield Path(folder) / name


def _version_key(name: str) -> tuple[int, ...]:
    """``"2.7.18"`` -> ``(2, 7, 18)``, so 2.7.18 sorts above 2.7.9 (a suffix is ignored)."""
    return tuple(int(part) for part in name.partition("-")[0].split(".") if part.isdigit())


def _is_python27(path: Path) -> bool:
    try:
        done = subprocess.run(
            [str(path), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and done.stdout.strip() == "2.7"


def find_python2(explicit: str | None = None) -> Path:
    """The Python 2.7 interpreter to run wstest with: ``explicit``, else ``AUTOBAHN_PYTHON2``,
    else pyenv's newest 2.7.x, else ``python2.7`` / ``python2`` on PATH.

    Raises:
        InstallError: none of them is a working Python 2.7 (the message says what to install).
    """
    for path in _candidates(explicit):
        if path.is_file() and _is_python27(path):
            return path
    if explicit or os.environ.get("AUTOBAHN_PYTHON2"):
        raise InstallError(f"{explicit or os.environ['AUTOBAHN_PYTHON2']}: not a Python 2.7")
    raise InstallError(INSTALL_HINT)


def python2_env(**extra: str) -> dict[str, str]:
    """The environment for Python 2.7 processes: ours without the variables that would point
    it at Python 3 packages."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(extra)
    return env


def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.read_bytes())
    return h.hexdigest()


def _run_logged(cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
    """Run one install step with its output appended to ``log_path``.

    Raises:
        InstallError: it failed or timed out; the message has the log's tail.
    """
    with log_path.open("ab") as log:
        log.write(f"\n$ {' '.join(cmd)}\n".encode())
        log.flush()
        try:
            done = subprocess.run(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                timeout=PIP_TIMEOUT_S,
                check=False,
            )
            failed = f"exit status {done.returncode}" if done.returncode else ""
        except subprocess.TimeoutExpired:
            failed = f"no answer after {PIP_TIMEOUT_S:.0f}s"
    if failed:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
        raise InstallError(f"`{' '.join(cmd[:4])} ...` failed ({failed}):\n{tail}")


@contextmanager
def _locked(cache: Path) -> Iterator[None]:
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / "install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def wstest_path(cache: Path = CACHE) -> Path:
    return cache / "venv" / "bin" / "wstest"


def install(cache: Path = CACHE, python2: str | None = None, log: Log = _stderr) -> Path:
    """Make sure wstest is installed under ``cache``; return its path.

    Raises:
        InstallError: see :func:`find_python2` and :func:`_run_logged`.
    """
    interpreter = find_python2(python2)
    stamp_text = json.dumps(
        {
            "python2": str(interpreter),
            "requirements": _digest(REQUIREMENTS),
            "bootstrap": _digest(BOOTSTRAP_REQUIREMENTS),
        },
        sort_keys=True,
    )
    venv = cache / "venv"
    stamp = venv / ".installed"
    wstest = wstest_path(cache)
    with _locked(cache):
        if stamp.is_file() and stamp.read_text() == stamp_text and wstest.is_file():
            return wstest
        log(f"autobahn: installing wstest into {venv} (Python 2.7: {interpreter}); ~1 min")
        log_path = cache / "install.log"
        log_path.write_text("")
        boot = cache / "bootstrap"
        shutil.rmtree(boot, ignore_errors=True)
        shutil.rmtree(venv, ignore_errors=True)
        pip3 = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check"]
        _run_logged(
            [*pip3, "--no-deps", "--target", str(boot), "-r", str(BOOTSTRAP_REQUIREMENTS)],
            log_path,
        )
        env = {**os.environ, "PYTHONPATH": str(boot)}
        _run_logged(
            [
                sys.executable,
                "-m",
                "virtualenv",
                "--no-download",
                "--no-periodic-update",
                "--app-data",
                str(cache / "virtualenv-app-data"),
                "--python",
                str(interpreter),
                str(venv),
            ],
            log_path,
            env,
        )
        pip2 = [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-python-version-warning"]
        _run_logged([*pip2, "-r", str(REQUIREMENTS)], log_path, python2_env())
        smoke = [str(venv / "bin" / "python"), "-c", "import autobahntestsuite.wstest"]
        _run_logged(smoke, log_path, python2_env())
        stamp.write_text(stamp_text)
        log(f"autobahn: wstest installed (log: {log_path})")
    return wstest


def main() -> int:
    try:
        print(install())
    except InstallError as exc:
        print(f"autobahn: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
