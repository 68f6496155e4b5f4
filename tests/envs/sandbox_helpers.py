"""Helpers for the sandbox tests: skip when a protection is off on this host, find processes by marker."""

from __future__ import annotations

import os

import pytest


def require(layers: dict, *names: str) -> None:
    """Skip (with the reason) when a protection the test relies on is off on this host."""
    missing = [n for n in names if not layers.get(n)]
    if missing:
        pytest.skip(f"sandbox layer(s) off on this host: {', '.join(missing)}")


def require_any(layers: dict, *names: str) -> None:
    if not any(layers.get(n) for n in names):
        pytest.skip(f"none of these sandbox layers is on here: {', '.join(names)}")


def processes_with(marker: str) -> list[int]:
    """Host pids whose command line contains `marker`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found
