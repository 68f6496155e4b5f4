"""Shared fixtures for the envs tests: the sandbox profile, layer-dependent skips, process scanning."""

from __future__ import annotations

import json
import os

import pytest

from envs import reference_data

SHARED_REFERENCE = "/work/shared/reference/alphaevolve_constructions.json"


@pytest.fixture(scope="session")
def profile():
    from envs.sandbox_profile import current_profile

    return current_profile()


@pytest.fixture(scope="session")
def layers(profile) -> dict:
    return profile.layers()


def require(layers: dict, *names: str) -> None:
    """Skip (with the reason) when a protection the test relies on is off on this host."""
    missing = [n for n in names if not layers.get(n)]
    if missing:
        pytest.skip(f"sandbox layer(s) off on this host: {', '.join(missing)}")


def require_any(layers: dict, *names: str) -> None:
    if not any(layers.get(n) for n in names):
        pytest.skip(f"none of these sandbox layers is on here: {', '.join(names)}")


@pytest.fixture(scope="session")
def reference() -> dict:
    """The published constructions (the shared copy when present, else the one shipped in envs/data)."""
    path = SHARED_REFERENCE if os.path.exists(SHARED_REFERENCE) else reference_data.PATH
    with open(path) as f:
        return json.load(f)


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
