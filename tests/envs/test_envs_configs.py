"""Every preset in configs/env instantiates through Hydra into a picklable env with a prompt."""

from __future__ import annotations

import os
import pickle

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from envs.base import Env

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "env")
PRESETS = {"cp26": ("CirclePackingEnv", {"n": 26, "target": 2.636, "cpus_per_eval": 1}),
           "cp32": ("CirclePackingEnv", {"n": 32, "target": 2.940}),
           "ac1": ("FirstAutocorrelationEnv", {"target": 1.503, "cpus_per_eval": 2}),
           "ac2": ("SecondAutocorrelationEnv", {"target": 0.97}),
           "erdos": ("ErdosMinOverlapEnv", {"target": 0.3808, "max_length": 1000}),
           "code": ("CodeEnv", {"problems_per_family": 4}), "arc": ("ArcEnv", {"version": "arcagi"}),
           "code_basics": ("CodeEnv", {"problems_per_family": 1, "tests_per_problem": 10, "memory_mb": 512}),
           "tabular": ("TabularEnv", {"dataset": "breast_cancer"}), "toy_digits": ("ToyDigitsEnv", {"length": 12}),
           "ac1_direct": ("AC1DirectEnv", {"pieces": 12, "start": "flat"}),
           "cp_direct": ("CPDirectEnv", {"circles": 6, "start": "cluster"})}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_instantiates(name):
    env = instantiate(OmegaConf.load(os.path.join(CONFIG_DIR, f"{name}.yaml")))
    cls, fields = PRESETS[name]
    assert type(env).__name__ == cls and isinstance(env, Env)
    for key, value in fields.items():
        assert getattr(env, key) == pytest.approx(value), key
    clone = pickle.loads(pickle.dumps(env))  # Ray ships envs to workers by pickle
    state = clone.initial_states(None)[0]
    assert len(clone.prompt(state)) > 50
    if hasattr(env, "reward") and not isinstance(env.reward, type(None)):
        assert type(env.reward).__name__ == "RewardSpec"


def test_no_preset_is_missing():
    assert sorted(f[:-5] for f in os.listdir(CONFIG_DIR) if f.endswith(".yaml")) == sorted(PRESETS)
