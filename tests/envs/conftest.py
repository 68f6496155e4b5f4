"""Shared fixtures for the envs tests: the sandbox profile and its layers, the published constructions."""

from __future__ import annotations

import json
import os

import pytest

from envs import reference_data

SHARED_REFERENCE = "/work/shared/reference/alphaevolve_constructions.json"


@pytest.fixture(scope="session")
def profile():
    from envs.sandbox.detect import current_profile

    return current_profile()


@pytest.fixture(scope="session")
def layers(profile) -> dict:
    return profile.layers()


@pytest.fixture(scope="session")
def reference() -> dict:
    """The published constructions (the shared copy when present, else the one shipped in envs/data)."""
    path = SHARED_REFERENCE if os.path.exists(SHARED_REFERENCE) else reference_data.PATH
    with open(path) as f:
        return json.load(f)
