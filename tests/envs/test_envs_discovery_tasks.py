"""The small discovery tasks (ac1_direct, cp_direct): scores equal independently computed values, wrong or
malformed answers are rejected with a reason, the prompt carries the parent state and its score, the stored
best-known constructions score what they claim, and the hill-climbing baseline is seeded and monotone."""

from __future__ import annotations

import math

import numpy as np
import pytest

from envs.ac1_direct import BEST_KNOWN as AC1_BEST
from envs.ac1_direct import AC1DirectEnv
from envs.base import State
from envs.cp_direct import BEST_KNOWN as CP_BEST
from envs.cp_direct import CPDirectEnv
from envs.hill_climb import hill_climb
from envs.number_answers import last_bracketed


def c1_by_hand(heights: list[float]) -> float:
    """AC1's C1 with the reference's clipping, by explicit double loops (independent of np.convolve)."""
    a = [min(max(h, 0.0), 1000.0) for h in heights]
    n = len(a)
    peak = max(sum(a[i] * a[k - i] for i in range(n) if 0 <= k - i < n) for k in range(2 * n - 1))
    return 2 * n * peak / sum(a) ** 2


@pytest.mark.parametrize("heights, expected", [
    ([1, 2, 3], 2.0),  # conv [1, 4, 10, 12, 9]: 2*3*12 / 6^2
    ([1, 0, 1], 3.0),  # conv [1, 0, 2, 0, 1]: 2*3*2 / 2^2
    ([-5, 1, 1], 3.0),  # a negative height counts as 0 (the reference's rule): [0, 1, 1]
    ([5] * 12, 2.0),  # equal heights
])
def test_ac1_direct_scores_equal_hand_computed_c1(heights, expected):
    env = AC1DirectEnv()
    result = env.evaluate(", ".join(str(h) for h in heights) + "]", env.initial_states()[0])
    assert result.ok and result.score == pytest.approx(expected, rel=1e-12)
    assert result.reward == pytest.approx(1 / expected, rel=1e-12) and result.value == -result.score


def test_ac1_best_known_heights_score_what_they_claim():
    for pieces, (c1, heights) in AC1_BEST.items():
        assert len(heights) == pieces
        assert c1_by_hand(heights) == pytest.approx(c1, rel=1e-12)
        result = AC1DirectEnv(pieces=pieces).verify_construction(heights)
        assert result.ok and result.score == pytest.approx(c1, rel=1e-12)
        assert AC1DirectEnv(pieces=pieces).best_known == c1 < 2.0  # headroom below the flat start


def _packing_ok(centres, radii) -> bool:
    """Independent check: inside the square and pairwise disjoint, at the packing task's tolerance."""
    for (x, y), r in zip(centres, radii):
        if r < 0 or x - r < -1e-12 or x + r > 1 + 1e-12 or y - r < -1e-12 or y + r > 1 + 1e-12:
            return False
    return all(math.dist(centres[i], centres[j]) >= radii[i] + radii[j] - 1e-12
               for i in range(len(centres)) for j in range(i + 1, len(centres)))


@pytest.mark.parametrize("centres, expected", [
    ([(0.5, 0.5)], 0.5),  # one circle: the wall distance
    ([(0.25, 0.5), (0.75, 0.5)], 0.5),  # r1, r2 <= 0.25 and r1 + r2 <= 0.5
    ([(0.2, 0.5), (0.5, 0.5), (0.8, 0.5)], 0.5),  # r1 = r3 = 0.2, r2 = 0.1 beats r2 = 0.3 alone
    ([(0.5, 0.5), (0.5, 0.5)], 0.0),  # coincident centres: both radii 0, still a valid packing
    ([(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75), (0.5, 0.5)], 0.75 + math.sqrt(2) / 4),
])
def test_cp_direct_radii_are_the_lp_optimum(centres, expected):
    from envs.cp_direct import lp_radii

    env = CPDirectEnv()
    completion = ", ".join(f"({x}, {y})" for x, y in centres)[1:] + "]"  # after the prompt's "[("
    result = env.evaluate(completion, env.initial_states()[0])
    assert result.ok and result.score == pytest.approx(expected, abs=1e-9)
    radii, _ = lp_radii(np.array(centres, dtype=float))
    assert _packing_ok(centres, radii.tolist())


def test_cp_best_known_centres_score_what_they_claim():
    from envs.cp_direct import lp_radii

    for n, (total, centres) in CP_BEST.items():
        radii, _ = lp_radii(np.array(centres))
        assert len(centres) == n and _packing_ok(centres, radii.tolist())
        assert CPDirectEnv(circles=n).verify_construction(centres).score == pytest.approx(total, rel=1e-9)
    assert CP_BEST[5][0] == pytest.approx(0.75 + math.sqrt(2) / 4, rel=1e-12)  # the known optimum for 5


@pytest.mark.parametrize("env, completion, reason", [
    (CPDirectEnv(), "0.5, 0.5), (1.2, 0.5)]", "outside the unit square"),
    (CPDirectEnv(), "0.5, 0.5), (-0.01, 0.5)]", "outside the unit square"),
    (CPDirectEnv(), "0.5, 0.5), (0.2)]", "2 per centre"),
    (CPDirectEnv(circles=2), "0.1, 0.1), (0.5, 0.5), (0.9, 0.9)]", "need 1 to 2 centres"),
    (AC1DirectEnv(), ", ".join(["5"] * 13) + "]", "need 1 to 12 heights"),
    (AC1DirectEnv(), "0, 0, 0, 0]", "sum must be >= 0.01"),
    (AC1DirectEnv(), "nan, inf]", "need 1 to 12 heights"),  # no numbers it can read
    (AC1DirectEnv(), "I would rather not.", "need 1 to 12 heights"),
])
def test_wrong_answers_are_invalid_with_a_reason(env, completion, reason):
    result = env.evaluate(completion, env.initial_states()[0])
    assert result.status == "invalid" and result.reward == 0.0 and reason in result.message


def test_plausible_but_worse_answers_score_below_the_parent():
    ac1 = AC1DirectEnv()
    parent = ac1.initial_states()[0]  # flat: C1 = 2
    spike = ac1.evaluate("1, 1, 1, 1, 1, 9, 9, 1, 1, 1, 1, 1]", parent)  # a tall middle peaks the autoconvolution
    assert spike.ok and spike.reward < 1 / parent.score
    cp = CPDirectEnv()
    crowded = cp.evaluate("0.5, 0.5), (0.51, 0.5), (0.52, 0.5), (0.5, 0.51), (0.51, 0.51), (0.52, 0.51)]",
                          cp.initial_states()[0])
    assert crowded.ok and crowded.reward < cp.initial_states()[0].score


def test_parse_reads_the_last_list_and_one_left_open():
    assert last_bracketed("first [1, 2] then [3, 4] done") == "[3, 4]"
    assert last_bracketed("[(0.1, 0.2), (0.3, 0.4)]") == "[(0.1, 0.2), (0.3, 0.4)]"
    assert last_bracketed("[1, 2] and [3, 4") == "[3, 4]"  # stopped at its "]", which the stop string removed
    assert last_bracketed("no list") is None
    env = AC1DirectEnv()
    assert env.parse("3, 4, 5") == "[3, 4, 5]"  # the prompt ended with the answer prefix "["


def test_prompt_carries_the_parent_state_and_its_score():
    env = AC1DirectEnv()
    text = env.prompt(State(construction=[3.0, 1.5, 2.0], score=2.25))
    assert "[3, 1.5, 2]" in text and "2.25" in text and "lower is better" in text
    cp = CPDirectEnv()
    text = cp.prompt(State(construction=[[0.1, 0.2], [0.7, 0.7]], score=0.4))
    assert "[(0.1, 0.2), (0.7, 0.7)]" in text and "0.4" in text and "higher is better" in text
    assert env.answer_prefix == "[" and cp.answer_prefix == "[("


def test_hill_climb_is_seeded_monotone_and_improves():
    for env in (AC1DirectEnv(), CPDirectEnv()):
        start = env.initial_states()[0].score
        curve = hill_climb(env, 200, seed=3)
        assert curve == hill_climb(env, 200, seed=3) and len(curve) == 200
        signed = np.array(curve) * (1 if env.higher_is_better else -1)
        assert np.all(np.diff(signed) >= 0)
        assert signed[-1] > start * (1 if env.higher_is_better else -1)
        assert hill_climb(env, 200, seed=4) != curve


def test_bad_task_parameters_are_refused():
    with pytest.raises(ValueError, match="pieces must be in 2..64"):
        AC1DirectEnv(pieces=1)
    with pytest.raises(ValueError, match="start must be one of"):
        AC1DirectEnv(start="zigzag")
    with pytest.raises(ValueError, match="circles must be in 2..32"):
        CPDirectEnv(circles=40)
