"""Env names -> Env objects for the trainer (the trainer composes envs; envs never import the trainer)."""

from __future__ import annotations

from envs.base import Env
from envs.toy_digits import ToyDigitsEnv

ENVS = {"toy_digits": ToyDigitsEnv}


def make_env(name: str, **kwargs) -> Env:
    if name not in ENVS:
        raise ValueError(f"unknown env {name!r}: use one of {sorted(ENVS)}")
    return ENVS[name](**kwargs)
