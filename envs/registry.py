"""Task names -> Env classes, for the CLI and anything else that builds envs from a name."""

from __future__ import annotations

import importlib

ENVS = {
    "circle_packing": "envs.circle_packing:CirclePackingEnv",
    "ac1": "envs.ac1:FirstAutocorrelationEnv",
    "ac2": "envs.ac2:SecondAutocorrelationEnv",
    "erdos": "envs.erdos:ErdosMinOverlapEnv",
    "code": "envs.code_env:CodeEnv",
    "arc": "envs.arc:ArcEnv",
    "tabular": "envs.tabular:TabularEnv",
    "toy_digits": "envs.toy_digits:ToyDigitsEnv",
    "ac1_direct": "envs.ac1_direct:AC1DirectEnv",
    "cp_direct": "envs.cp_direct:CPDirectEnv",
}


def env_class(name: str) -> type:
    if name not in ENVS:
        raise ValueError(f"unknown env {name!r}; choose one of {', '.join(ENVS)}")
    module, _, cls = ENVS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def make_env(name: str, **params):
    """An env by name; unknown parameters or bad values raise ValueError/TypeError with a clear message."""
    return env_class(name)(**params)
