"""``wsprobe connect``: the interactive client (to be written)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``connect`` (and ``record``) subcommands."""
