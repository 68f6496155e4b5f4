"""Reward transforms, the improvement prompt, state injection, initial states, answer parsing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from envs.ac1 import FirstAutocorrelationEnv
from envs.ac2 import SecondAutocorrelationEnv
from envs.base import State, last_code_block
from envs.circle_packing import CirclePackingEnv
from envs.erdos import ErdosMinOverlapEnv
from envs.rewards import RewardSpec, transform


def test_transforms_match_ttt_discover_formulas():
    assert transform("linear", 2.5) == 2.5
    assert transform("neg_linear", 2.5) == -2.5
    assert transform("inverse", 1.5) == pytest.approx(1 / (1e-8 + 1.5), rel=1e-15)
    assert transform("scaled_inverse", 2.0) == pytest.approx(5 / (1e-8 + 2.0), rel=1e-15)
    assert transform("exp_neg", 1.0) == pytest.approx(math.exp(-1.0))
    # AC1's reward in TTT-Discover's env_ac.py is 1/C1 with no epsilon: bit-equal to the division.
    assert transform("reciprocal", 1.5028628982558263) == 1 / 1.5028628982558263
    assert transform("reciprocal", 0.0) == 0.0 and transform("reciprocal", float("inf")) == 0.0
    assert transform("linear", float("nan")) == 0.0 and transform("inverse", -1e-8) == 0.0
    with pytest.raises(ValueError, match="unknown reward kind"):
        transform("square", 1.0)
    with pytest.raises(ValueError):
        RewardSpec(partial_credit=1.5)


def test_improvement_over_parent_and_partial_credit():
    spec = RewardSpec(kind="inverse", improvement_over_parent=True)
    assert spec.valid(1.5, 2.0) == pytest.approx(1 / 1.5 - 1 / 2.0, rel=1e-6)
    assert spec.valid(1.5, None) == pytest.approx(1 / 1.5, rel=1e-6)  # no parent score: plain reward
    pc = RewardSpec(kind="linear", partial_credit=0.5, partial_credit_scale=1e-3)
    assert pc.near_valid(2.0, 0.0) == pytest.approx(1.0)
    assert pc.near_valid(2.0, 5e-4) == pytest.approx(0.5)
    assert pc.near_valid(2.0, 2e-3) == 0.0 and pc.near_valid(2.0, float("inf")) == 0.0
    assert RewardSpec().near_valid(2.0, 0.0) == 0.0  # off by default
    assert RewardSpec.coerce({"partial_credit": 0.1}, "inverse") == RewardSpec(kind="inverse", partial_credit=0.1)


def test_prompt_carries_the_state():
    env = CirclePackingEnv(n=26, timeout_s=600)
    state = State(code="def run_packing():\n    return 1\n", score=2.61, parent_score=2.50, stdout_tail="iteration 9: 2.61")
    prompt = env.prompt(state)
    for piece in ("26 disjoint circles", "run_packing() -> (centers, radii, sum_radii)", "def check_packing",
                  "Here is the last code we ran", "return 1", "2.5 -> 2.61", "Target: 2.636",
                  "Current gap: 0.026", "generously rewarded", "iteration 9: 2.61", "600 seconds", "No file or network"):
        assert piece in prompt, piece
    fresh = env.prompt(env.initial_states()[0])
    assert "There is no previous program" in fresh and "Here is the last code" not in fresh


def test_erdos_prompt_shows_only_the_first_200_lines_and_lower_is_better_gap():
    env = ErdosMinOverlapEnv()
    code = "\n".join(f"x{i} = {i}" for i in range(250))
    prompt = env.prompt(State(code=code, score=0.3810, parent_score=0.3812))
    assert "x199 = 199" in prompt and "x200 = 200" not in prompt and "50 more lines" in prompt
    assert "Current gap: 0.0002" in prompt and "lower is better" in prompt


def test_last_code_block_is_the_answer():
    text = "thinking\n```python\nA = 1\n```\nmore\n```python\nB = 2\n```\n"
    assert last_code_block(text) == "B = 2\n"
    env = CirclePackingEnv(timeout_s=5)
    r = env.evaluate("no code here", State())
    assert r.status == "format_error" and r.reward == 0.0


@pytest.mark.parametrize("env_cls,name", [(FirstAutocorrelationEnv, "height_sequence_1"),
                                          (SecondAutocorrelationEnv, "height_sequence_2"),
                                          (ErdosMinOverlapEnv, "initial_h_values")])
def test_parent_construction_is_injected_as_a_global(env_cls, name):
    env = env_cls(initial_state="best_available", timeout_s=20)
    state = env.initial_states()[0]
    assert f"`{name}`" in env.prompt(state)
    returned = f"{name}, 0.0, len({name})" if env_cls is ErdosMinOverlapEnv else name
    entry_args = "seed=42, budget_s=1" if env.call_kwargs else ""
    program = f"import numpy as np\n\ndef {env.entry}({entry_args}):\n    return {returned}\n"
    result = env.verify(program, state)
    assert result.ok, result.message  # TTT-Discover's Erdős task raised NameError here (known bug 1)
    assert result.score == pytest.approx(state.score, abs=1e-12)


def test_erdos_scores_the_recomputed_c5_not_the_reported_one():
    env = ErdosMinOverlapEnv(initial_state="best_available", timeout_s=20)
    state = env.initial_states()[0]
    program = "def run(seed=42, budget_s=1):\n    return initial_h_values, 0.1, len(initial_h_values)\n"
    result = env.verify(program, state)
    assert result.ok and result.extra["reported_c5"] == 0.1
    assert result.score == pytest.approx(0.38092303510845016, abs=1e-12)
    lie = "def run(seed=42, budget_s=1):\n    return initial_h_values, 0.1, 7\n"
    assert env.verify(lie, state).status == "invalid"


def test_initial_states_follow_ttt_discover():
    rng = np.random.default_rng(1)
    for env in (FirstAutocorrelationEnv(), SecondAutocorrelationEnv()):
        s = env.initial_states(rng)[0]
        h = np.array(s.construction)
        assert 1000 <= h.size <= 7999 and np.all(h == h[0]) and 0 < h[0] < 1
    assert FirstAutocorrelationEnv().initial_states(rng)[0].value == pytest.approx(-2.0)  # flat: C1 = 2
    e = ErdosMinOverlapEnv().initial_states(rng)[0]
    h = np.array(e.construction)
    assert 40 <= h.size <= 99 and abs(h.mean() - 0.5) < 1e-12 and np.all((h > 0.09) & (h < 0.91))
    assert e.value == pytest.approx(-e.score) and e.score > 0.38
    best = FirstAutocorrelationEnv(initial_state="best_available").initial_states()[0]
    # TTT-Discover's best_available AC1 start: the 1,319-piece sequence, C1 1.5031635547 (its own verifier)
    assert len(best.construction) == 1319 and best.score == pytest.approx(1.5031635547, abs=1e-10)
    assert CirclePackingEnv().initial_states()[0] == State(value=0.0)
    assert CirclePackingEnv(n=26, initial_state="best_available").initial_states()[0].score == pytest.approx(2.6358627564, abs=1e-9)
    none = CirclePackingEnv(n=26, initial_state="none").initial_states()[0]
    assert "def run_packing" in none.code and none.construction is None
    with pytest.raises(ValueError, match="initial_state"):
        CirclePackingEnv(initial_state="greedy")


@pytest.mark.parametrize("env_cls", [FirstAutocorrelationEnv, ErdosMinOverlapEnv])
def test_entry_receives_seed_and_budget_as_the_prompt_says(env_cls):
    """The prompt promises `seed=42, budget_s=...`; a program without defaults would fail if they were not
    passed (call_kwargs once was a dataclass field whose default () silently replaced the subclasses')."""
    env = env_cls(timeout_s=20)
    assert env.call_kwargs == ("seed", "budget_s")
    body = "h = [0.5] * 1000\n    return (h, 0.0, 1000) if ENTRY == 'run' else h"
    program = (f"ENTRY = {env.entry!r}\n\ndef {env.entry}(seed, budget_s):\n"
               f"    assert seed == 42 and budget_s == {env.budget_s}, (seed, budget_s)\n    {body}\n")
    result = env.verify(program, State())
    assert result.ok, result.message
