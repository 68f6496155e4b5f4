"""Our advantages, PUCT sampler, circle-packing and AC1 verifiers against TTT-Discover's rules, bit for bit.

The reference is tests/reference_ttt.py, restated from the original source (it imports nothing of ours). Inputs
are seeded random draws of every class the rules must agree on: ties, negatives, huge values, tiny sums,
NaN/inf, degenerate groups and buffers. Equality is exact (NaN equals NaN): every computation here follows
the same operations in the same order on both sides, so no tolerance is needed anywhere.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from envs.ac1 import FirstAutocorrelationEnv
from envs.base import State
from envs.circle_packing import CirclePackingEnv
from tests import reference_ttt as ref
from trainer.advantages import compute_advantages
from trainer.state_sampler import PUCTSampler


def same(a, b) -> bool:
    a, b = float(a), float(b)
    return a == b or (math.isnan(a) and math.isnan(b))


# ---------------------------------------------------------------- advantages


def reward_groups(rng: np.random.Generator):
    """(class name, rewards) for a few hundred groups."""
    for _ in range(40):
        yield "gaussian", rng.standard_normal(int(rng.integers(2, 65))).tolist()
    for _ in range(40):  # ties: a few distinct values, often a tied maximum
        K = int(rng.integers(2, 65))
        yield "ties", rng.choice([0.0, 0.5, 0.5, 1.0], size=K).tolist()
    for _ in range(30):  # failures get 0, valid ones 1/C1 near 0.665, a float32 ulp apart or more
        K = int(rng.integers(2, 65))
        yield "ac1_like", np.where(rng.random(K) < 0.4, 0.0, 1 / (1.503 + rng.random(K) * 1e-4)).tolist()
    for _ in range(20):
        yield "one_success", [0.0] * int(rng.integers(1, 64)) + [1.0]
    for _ in range(20):
        yield "all_equal", [float(rng.standard_normal())] * int(rng.integers(1, 65))
    for _ in range(20):
        yield "single", [float(rng.standard_normal() * 10)]
    for _ in range(20):
        yield "pair", rng.standard_normal(2).tolist()
    for _ in range(20):
        yield "huge", (rng.standard_normal(int(rng.integers(2, 33))) * 10.0 ** rng.integers(5, 38)).tolist()
    for _ in range(20):
        yield "tiny_spread", (3.0 + rng.standard_normal(int(rng.integers(2, 33))) * 1e-7).tolist()
    for _ in range(30):
        r = rng.standard_normal(int(rng.integers(2, 17)))
        r[rng.integers(len(r))] = rng.choice([np.nan, np.inf, -np.inf])
        yield "nonfinite", r.tolist()


def test_advantages_equal_the_reference_bit_for_bit():
    cases = list(reward_groups(np.random.default_rng(20260116)))
    assert len(cases) >= 250
    for name, rewards in cases:
        adv, beta = compute_advantages(rewards, "entropic_adaptive_beta")
        ref_adv, ref_beta = ref.entropic_adaptive_beta(rewards)
        assert same(beta, ref_beta.item()), (name, rewards, beta, ref_beta)
        assert adv.shape == (len(rewards),)
        np.testing.assert_array_equal(adv, ref_adv.double().numpy(), err_msg=f"{name}: {rewards}")
        for b in (0.5, 2.0):
            fixed, used = compute_advantages(rewards, "entropic", beta=b)
            assert used == b
            np.testing.assert_array_equal(fixed, ref.entropic(rewards, b).double().numpy(), err_msg=name)
        mean, _ = compute_advantages(rewards, "mean_baseline")
        np.testing.assert_array_equal(mean, ref.mean_baseline(rewards).double().numpy(), err_msg=name)


def test_reference_advantages_match_the_documented_test_vectors():
    """TTT_DISCOVER.md section 1: one success among 63 zeros -> beta ~3.36, A_top ~27.8; all equal -> 2^20."""
    adv, beta = ref.entropic_adaptive_beta([0.0] * 63 + [1.0])
    assert abs(beta.item() - 3.36) < 0.005 and abs(adv[-1].item() - 27.8) < 0.05
    adv, beta = ref.entropic_adaptive_beta([0.7] * 64)
    assert beta.item() == 2.0 ** 20 and bool((adv == 0).all())


# ---------------------------------------------------------------- PUCT


def initial_values(rng: np.random.Generator) -> list:
    kind = rng.integers(4)
    n = int(rng.integers(1, 9))
    if kind == 0:  # unknown values: the original's scale is nan until a child arrives
        return [None] * n
    if kind == 1:  # tied values
        return [float(rng.choice([-2.0, -1.6]))] * n
    if kind == 2:
        return rng.uniform(-2.0, -1.5, n).tolist()
    return [None if rng.random() < 0.5 else float(rng.uniform(-2, -1.5)) for _ in range(n)]


def child_construction(rng: np.random.Generator) -> list:
    """Mostly 1,000 pieces (admitted); sometimes too short or too long (refused), or a repeat (duplicate)."""
    u = rng.random()
    length = 999 if u < 0.05 else 100001 if u < 0.08 else 1000
    return [float(rng.integers(0, 40))] * length


def child_value(rng: np.random.Generator) -> float:
    if rng.random() < 0.5:  # ties in value, hence in rank prior, m and score
        return float(rng.choice([-1.9, -1.7, -1.55, -1.52]))
    return float(-rng.uniform(1.5, 2.0))


def assert_same_buffer(ours: PUCTSampler, theirs: ref.RefPUCT):
    assert [node.id for node in ours.nodes] == [s.id for s in theirs.states]
    assert ours.T == theirs.T
    for node, s in zip(ours.nodes, theirs.states):
        assert same(node.value, s.value if s.value is not None else -math.inf)
        assert node.n == theirs.n.get(s.id, 0)
        assert node.m == theirs.m.get(s.id), (node.id, node.m, theirs.m.get(s.id))


@pytest.mark.parametrize("seed", range(60))
def test_puct_scores_selection_and_pruning_equal_the_reference(seed):
    rng = np.random.default_rng(seed)
    env = FirstAutocorrelationEnv()
    values = initial_values(rng)
    cap = int(rng.integers(4, 40))
    ours = PUCTSampler(c=1.0, topk_children=2, max_buffer_size=cap)
    ours.add_initial([State(value=v) for v in values])
    theirs = ref.RefPUCT(values, c=1.0, topk_children=2, max_buffer_size=cap)
    for step in range(int(rng.integers(3, 8))):
        table = ours.scores()
        G = int(rng.integers(1, 9))
        picked = [node.id for node in ours.select(G)]
        assert picked == theirs.sample(G), (step, picked)
        assert len(table) == len(theirs.last_table)
        for row, (sid, Q, P, bonus, score) in zip(table, theirs.last_table):
            assert row.node_id == sid
            assert same(row.Q, Q) and same(row.P, P) and same(row.bonus, bonus) and same(row.score, score), (row, Q, P, bonus, score)
        for pid in picked:
            parent = theirs._state(pid)
            for _ in range(int(rng.integers(1, 6))):
                if rng.random() < 0.25:
                    ours.record(pid, None, None)
                    theirs.failed(parent)
                    continue
                construction, value = child_construction(rng), child_value(rng)
                child = State(construction=construction, value=value)
                ours.record(pid, child, value, admit=env.admits(child))
                theirs.update(parent, construction, value)
        ours.flush()
        theirs.flush()
        assert_same_buffer(ours, theirs)


def test_puct_ties_follow_numpy_argsort_not_buffer_order():
    """Tied values among > 16 states: numpy's default argsort (introsort / SIMD sort) does not keep buffer
    order, and PUCT's rank prior and the buffer cap must follow it, not a stable sort (with numpy 2.3 on
    x86-64 the two orders differ for 200 of 200 such draws; the check below holds either way)."""
    values = (-np.random.default_rng(3).choice([1.5, 1.6, 1.7], size=40)).tolist()
    sampler = PUCTSampler(max_buffer_size=1000)
    sampler.add_initial([State(value=v) for v in values])
    ranks = np.argsort(np.argsort(-np.array(values)))
    assert [row.P for row in sampler.scores()] == ((40 - ranks) / (40 * 41 / 2)).tolist()
    capped = PUCTSampler(max_buffer_size=12)
    root = capped.add_initial([State(value=-2.0)])[0]
    for i, v in enumerate(values):
        capped.record(root.id, State(construction=[float(i)] * 1000, value=v), v)
    capped._cap(12)
    order = np.argsort([-2.0] + values)[::-1]  # buffer index = node id here
    assert [node.id for node in capped.nodes] == sorted({0, *(int(i) for i in order[:11])})


# ---------------------------------------------------------------- circle packing


def packings(rng: np.random.Generator):
    """(centers, radii, n): random, near-boundary, touching, negative, NaN/inf and wrong-shape packings."""
    for _ in range(60):  # a grid of equal circles, jittered by a few ulps around the tolerances
        k = int(rng.integers(1, 6))
        n = k * k
        r = 0.5 / k
        centers = np.array([[(i % k) * 2 * r + r, (i // k) * 2 * r + r] for i in range(n)])
        radii = np.full(n, r) + rng.integers(-3, 4, n) * 1e-13 + rng.integers(-4, 5, n) * np.spacing(r)
        yield centers, radii, n
    for _ in range(120):  # two circles whose gap is -1e-12 to within a few ulps: the overlap tolerance edge
        c0 = rng.uniform(0.3, 0.4, 2)
        angle = rng.uniform(0, 2 * np.pi)
        d = rng.uniform(0.1, 0.2)
        c1 = c0 + d * np.array([np.cos(angle), np.sin(angle)])
        dist = float(np.sqrt(np.sum((c0 - c1) ** 2)))
        r0 = rng.uniform(0.01, 0.05)
        r1 = dist - r0 + 1e-12 + int(rng.integers(-6, 7)) * np.spacing(dist)
        yield np.array([c0, c1]), np.array([r0, r1]), 2
    for _ in range(60):  # one circle touching a side to within the 1e-12 tolerance, give or take ulps
        r = rng.uniform(0.05, 0.3)
        x = r - 1e-12 + int(rng.integers(-6, 7)) * np.spacing(r)
        y = 1 - r + 1e-12 + int(rng.integers(-6, 7)) * np.spacing(1.0)
        yield np.array([[x, rng.uniform(r, 1 - r)], [rng.uniform(r, 1 - r), y]]), np.array([r, r]) * [1, 0.999], 2
    for bad in (np.nan, np.inf, -np.inf, -1e-9, -0.0, 1e300):
        centers, radii = np.array([[0.25, 0.25], [0.75, 0.75]]), np.array([0.2, 0.2])
        radii[1] = bad
        yield centers, radii, 2
        centers = centers.copy()
        centers[0, 1] = bad
        yield centers, np.array([0.2, 0.2]), 2
    yield np.zeros((3, 2)), np.zeros(3), 2  # wrong shape


def test_circle_packing_verdicts_and_scores_equal_the_reference():
    cases = list(packings(np.random.default_rng(7)))
    verdicts = {True: 0, False: 0}
    for centers, radii, n in cases:
        expected = ref.cp_sum_radii(centers, radii, n)
        result = CirclePackingEnv(n=n).verify_construction(centers, radii)
        assert result.ok == (expected is not None), (centers.tolist(), radii.tolist(), result.message)
        if expected is not None:
            assert result.score == expected and result.reward == expected
        verdicts[result.ok] += 1
    assert min(verdicts.values()) > 50  # both sides of every edge were exercised


# ---------------------------------------------------------------- AC1


def sequences(rng: np.random.Generator):
    for _ in range(60):
        yield rng.random(int(rng.integers(1, 1500))) * 10.0 ** rng.integers(-2, 3)
    for _ in range(40):  # negatives (clipped to 0, not rejected)
        yield rng.standard_normal(int(rng.integers(1, 1500)))
    for _ in range(40):  # huge heights (capped at 1000, not rescaled)
        h = rng.random(int(rng.integers(1, 1500)))
        h[rng.random(h.size) < 0.1] = 10.0 ** rng.uniform(3, 300)
        yield h
    for _ in range(40):  # sums around the 0.01 threshold, after clipping
        n = int(rng.integers(1, 200))
        h = np.full(n, 0.01 / n) * (1 + int(rng.integers(-2, 3)) * 1e-15)
        h[rng.random(n) < 0.2] *= -1
        yield h
    for _ in range(30):  # ties: a constant, or two levels
        n = int(rng.integers(1, 2000))
        yield np.where(rng.random(n) < 0.5, 1.0, float(rng.choice([1.0, 0.5, 1000.0, 2000.0])))
    for bad in (np.nan, np.inf, -np.inf):
        h = rng.random(50)
        h[7] = bad
        yield h
    yield np.zeros(30)
    yield np.full(30, -0.0)
    yield np.array([])
    yield np.array([1e308, -1e308, 5.0])


def test_ac1_scores_equal_the_reference():
    env = FirstAutocorrelationEnv()
    cases = list(sequences(np.random.default_rng(11)))
    assert len(cases) >= 200
    valid = 0
    for h in cases:
        expected = ref.ac1_c1(h.tolist())
        result = env.verify_construction(h)
        assert result.ok == (expected != np.inf), (h[:5], result.message)
        if result.ok:
            valid += 1
            assert result.score == expected and result.reward == ref.ac1_reward(expected)
            assert result.value == -expected and result.construction == h.tolist()
        else:
            assert result.reward == 0.0
    assert valid > 150


def test_ac1_published_constructions_score_as_the_reference():
    from envs import reference_data

    env = FirstAutocorrelationEnv()
    for key, published in (("ac1_initial_state_heights_1319", 1.5031635547),
                           ("ttt_discover_ac1_heights", 1.5028628983)):
        h = reference_data.heights(key)
        expected = ref.ac1_c1(h.tolist())
        result = env.verify_construction(h)
        assert result.score == expected and round(expected, 10) == published
