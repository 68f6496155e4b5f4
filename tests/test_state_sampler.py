"""State samplers: PUCT scores and picks against hand arithmetic, lineage blocking, visit statistics,
insertion rules, pruning, JSON resume, greedy and fixed samplers, the factory."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from envs.base import State
from trainer.state_sampler import (FixedSampler, GreedySampler, PUCTSampler, StateSampler,
                                   make_state_sampler)


def st(value: float | None, code: str = "", construction=None) -> State:
    return State(code=code, construction=construction, value=value)


def child(value: float, tag: str) -> State:
    """A child with a unique code so it is never a duplicate."""
    return st(value, code=f"def f(): return {tag!r}")


def handcrafted_puct(c: float = 1.0) -> tuple[PUCTSampler, dict[str, int]]:
    """Two roots; I0 -> a, b and a -> d (grandchild of I0); I1 -> c; one failed rollout on each root.

    Values: I0 0.0, I1 0.5, a 1.0, b 3.0, c 2.0, d 4.0.
    """
    sampler = PUCTSampler(c=c)
    i0, i1 = sampler.add_initial([st(0.0, code="init 0"), st(0.5, code="init 1")])
    # step 1
    a = sampler.record(i0.id, child(1.0, "a"), 1.0)
    b = sampler.record(i0.id, child(3.0, "b"), 3.0)
    assert sampler.record(i0.id, None, None) is None
    c_ = sampler.record(i1.id, child(2.0, "c"), 2.0)
    assert sampler.record(i1.id, None, None) is None
    sampler.flush()
    # step 2
    d = sampler.record(a.id, child(4.0, "d"), 4.0)
    sampler.flush()
    return sampler, {"I0": i0.id, "I1": i1.id, "a": a.id, "b": b.id, "c": c_.id, "d": d.id}


def test_puct_statistics_of_the_handcrafted_buffer():
    sampler, ids = handcrafted_puct()
    assert sampler.T == 6  # 6 finished rollouts, 2 of them failed
    n = {name: sampler.node(i).n for name, i in ids.items()}
    # I0: a, b, failed (3) + d through its stored ancestor list [a, I0] (1).
    assert n == {"I0": 4, "I1": 2, "a": 1, "b": 0, "c": 0, "d": 0}
    m = {name: sampler.node(i).m for name, i in ids.items()}
    # m follows DIRECT children only: I0 keeps 3.0 although its grandchild d has 4.0.
    assert m == {"I0": 3.0, "I1": 2.0, "a": 4.0, "b": None, "c": None, "d": None}
    assert sampler.node(ids["d"]).ancestors == [ids["a"], ids["I0"]]
    assert sampler.node(ids["d"]).parent_id == ids["a"]


def test_puct_scores_and_picks_equal_hand_computation():
    sampler, ids = handcrafted_puct()
    # By hand: N = 6, T = 6 -> sqrt(1 + T) = sqrt(7); scale over non-initial values {1, 3, 2, 4} = 4 - 1 = 3.
    # Ranks by value: d 0, b 1, c 2, a 3, I1 4, I0 5 -> weights N - rank = 6, 5, 4, 3, 2, 1, sum 21.
    # Q = m if n > 0 else own value: I0 3.0 (m), I1 2.0 (m), a 4.0 (m), b 3.0, c 2.0, d 4.0.
    # score = Q + 1 * 3 * (w / 21) * sqrt(7) / (1 + n)
    root7 = math.sqrt(7.0)
    expected = {
        "I0": 3.0 + 3 * (1 / 21) * root7 / 5,  # 3.0755929
        "I1": 2.0 + 3 * (2 / 21) * root7 / 3,  # 2.2519763
        "a": 4.0 + 3 * (3 / 21) * root7 / 2,  # 4.5669467
        "b": 3.0 + 3 * (5 / 21) * root7 / 1,  # 4.8898224
        "c": 2.0 + 3 * (4 / 21) * root7 / 1,  # 3.5118579
        "d": 4.0 + 3 * (6 / 21) * root7 / 1,  # 6.2677868
    }
    assert expected["d"] == pytest.approx(6.2677868, abs=1e-7)  # the hand arithmetic itself
    assert expected["I0"] == pytest.approx(3.0755929, abs=1e-7)
    assert sampler.scale() == 3.0
    scores = {row.node_id: row for row in sampler.scores()}
    for name, node_id in ids.items():
        assert scores[node_id].score == pytest.approx(expected[name], rel=1e-12), name
    assert scores[ids["d"]].P == pytest.approx(6 / 21)
    # Order by score: d, b, a, c, I0, I1. Picking d blocks its lineage {d, a, I0}; b (a's sibling) is not in
    # it; picking b blocks I0 again; a is skipped; c is picked and blocks I1. Nothing else is left.
    picked = [node.id for node in sampler.select(6)]
    assert picked == [ids["d"], ids["b"], ids["c"]]
    assert [node.id for node in sampler.select(2)] == [ids["d"], ids["b"]]
    assert [node.id for node in sampler.select(1)] == [ids["d"]]


def test_puct_blocks_descendants():
    sampler = PUCTSampler(c=0.0)  # c = 0: score = Q, so the order is easy to read
    r0, r1 = sampler.add_initial([st(10.0, code="r0"), st(1.0, code="r1")])
    x = sampler.record(r1.id, child(5.0, "x"), 5.0)  # r1: n = 1, m = 5
    y = sampler.record(x.id, child(4.0, "y"), 4.0)  # x: n = 1, m = 4; r1: n = 2, m stays 5
    assert {row.node_id: row.score for row in sampler.scores()} == {r0.id: 10.0, r1.id: 5.0, x.id: 4.0, y.id: 4.0}
    # r1 blocks x and y: they are its descendants (not its ancestors), so only two lineages are left.
    assert [node.id for node in sampler.select(4)] == [r0.id, r1.id]


def test_puct_ties_break_by_value_then_buffer_order():
    sampler = PUCTSampler(c=0.0)
    r0, r1 = sampler.add_initial([st(5.0, code="r0"), st(3.0, code="r1")])
    x = sampler.record(r1.id, child(5.0, "x"), 5.0)  # Q(r1) = m = 5
    # Every score is 5: (score, value) puts r0 (value 5, first in the buffer) and x (value 5) ahead of r1
    # (value 3); x then blocks its parent r1.
    assert {row.score for row in sampler.scores()} == {5.0}
    assert [node.id for node in sampler.select(3)] == [r0.id, x.id]


def test_visit_counts_through_stored_ancestors_and_quirky_q():
    sampler = PUCTSampler()
    (root,) = sampler.add_initial([st(1.0, code="root")])
    a = sampler.record(root.id, child(2.0, "a"), 2.0)
    b = sampler.record(a.id, child(3.0, "b"), 3.0)
    assert (sampler.T, root.n, a.n, b.n) == (2, 2, 1, 0)
    sampler.record(b.id, None, None)  # a failed rollout still visits b, a and root
    assert (sampler.T, root.n, a.n, b.n) == (3, 3, 2, 1)
    assert b.m is None  # only failures: Q(b) stays its own value
    worse = sampler.record(b.id, child(0.5, "worse"), 0.5)
    assert (sampler.T, root.n, a.n, b.n, worse.n) == (4, 4, 3, 2, 0)
    assert (root.m, a.m, b.m) == (2.0, 3.0, 0.5)  # grandparents untouched; b's Q drops below its value 3
    q = {row.node_id: row.Q for row in sampler.scores()}
    assert q[b.id] == 0.5 and q[a.id] == 3.0 and q[root.id] == 2.0
    # A rollout whose child has no finite value counts as failed.
    assert sampler.record(b.id, child(float("nan"), "nan"), float("nan")) is None
    assert sampler.record(b.id, child(1.0, "none"), None) is None
    assert (sampler.T, b.n, b.m, len(sampler)) == (6, 4, 0.5, 4)
    with pytest.raises(KeyError):
        sampler.record(12345, child(1.0, "orphan"), 1.0)


def test_duplicates_are_not_inserted_but_still_counted():
    sampler = PUCTSampler()
    (root,) = sampler.add_initial([st(0.0, construction=[1.0, 2.0])])
    assert sampler.record(root.id, st(5.0, construction=[1.0, 2.0]), 5.0) is None  # same as the root
    assert (len(sampler), root.n, root.m, sampler.T) == (1, 1, 5.0, 1)
    first = sampler.record(root.id, st(1.0, construction=np.array([3.0, 4.0])), 1.0)
    assert first is not None
    assert sampler.record(root.id, st(2.0, construction=[3.0, 4.0]), 2.0) is None  # numpy vs list: same key
    assert sampler.record(root.id, st(2.0, code="x = 1"), 2.0) is not None
    assert sampler.record(root.id, st(3.0, code="x = 1"), 3.0) is None  # same code, no construction
    # No construction and no code: no key, never a duplicate.
    assert sampler.record(root.id, st(1.0), 1.0) is not None
    assert sampler.record(root.id, st(1.0), 1.0) is not None
    assert len(sampler) == 5
    # A pruned state's key is forgotten, as in the original: it may come back later.
    sampler = PUCTSampler(topk_children=1)
    (root,) = sampler.add_initial([st(0.0, code="root")])
    sampler.record(root.id, st(1.0, code="low"), 1.0)
    sampler.record(root.id, st(2.0, code="high"), 2.0)
    sampler.flush()
    assert sampler.record(root.id, st(1.0, code="low"), 1.0) is not None


def test_env_admission_counts_the_rollout_but_keeps_the_child_out():
    """TTT-Discover's update_states: AC constructions need 1,000..100,000 pieces, Erdos at most 1,000; a
    refused child still raises its parent's m and counts for n and T (the stats come before the filter)."""
    from envs.ac1 import FirstAutocorrelationEnv
    from envs.ac2 import SecondAutocorrelationEnv
    from envs.circle_packing import CirclePackingEnv
    from envs.erdos import ErdosMinOverlapEnv

    def pieces(n: int) -> State:
        return st(-1.5, construction=[1.0] * n)

    for env in (FirstAutocorrelationEnv(), SecondAutocorrelationEnv()):
        assert [env.admits(pieces(n)) for n in (999, 1000, 100000, 100001)] == [False, True, True, False]
        assert env.admits(st(-1.5)) and env.admits(pieces(0))  # no construction: not length-checked
    assert [ErdosMinOverlapEnv().admits(pieces(n)) for n in (1, 1000, 1001)] == [True, True, False]
    assert CirclePackingEnv().admits(st(2.6, construction={"centers": [], "radii": []}))
    ac1 = FirstAutocorrelationEnv()
    sampler = PUCTSampler()
    (root,) = sampler.add_initial([st(-2.0, code="root")])
    short = pieces(500)
    assert sampler.record(root.id, short, -1.4, admit=ac1.admits(short)) is None
    assert (len(sampler), root.n, root.m, sampler.T) == (1, 1, -1.4, 1)
    ok = pieces(1000)
    assert sampler.record(root.id, ok, -1.5, admit=ac1.admits(ok)) is not None
    assert (len(sampler), root.n, root.m, sampler.T) == (2, 2, -1.4, 2)


def test_signed_zeros_are_duplicates_as_in_the_original():
    sampler = PUCTSampler()
    (root,) = sampler.add_initial([st(0.0, code="root")])
    assert sampler.record(root.id, st(1.0, construction=[0.0, 1.0]), 1.0) is not None
    assert sampler.record(root.id, st(1.0, construction=[-0.0, 1.0]), 1.0) is None  # (0.0,) == (-0.0,)


def test_flush_keeps_top2_children_per_parent():
    sampler = PUCTSampler()
    (root,) = sampler.add_initial([st(0.0, code="root")])
    kids = {v: sampler.record(root.id, child(v, str(v)), v) for v in (1.0, 5.0, 3.0, 2.0)}
    grandkid = sampler.record(kids[1.0].id, child(9.0, "g"), 9.0)  # child of a child that will be pruned
    sampler.flush()
    kept = {node.id for node in sampler.nodes}
    assert kept == {root.id, kids[5.0].id, kids[3.0].id, grandkid.id}  # orphaned grandchild stays
    # Kept children of a parent compete with the ones from earlier steps too.
    sampler.record(root.id, child(4.0, "4"), 4.0)
    sampler.flush()
    assert sorted(nd.value for nd in sampler.nodes if nd.parent_id == root.id) == [4.0, 5.0]
    assert sampler.best().value == 9.0


def test_buffer_cap_keeps_every_initial_state():
    sampler = PUCTSampler(topk_children=0, max_buffer_size=4)  # 0: no per-parent pruning
    initial = sampler.add_initial([st(-10.0, code="i0"), st(-20.0, code="i1"), st(-30.0, code="i2")])
    for v in (1.0, 7.0, 3.0, 5.0):
        sampler.record(initial[0].id, child(v, str(v)), v)
    sampler.flush()
    assert len(sampler) == 4
    assert sorted(nd.value for nd in sampler.nodes) == [-30.0, -20.0, -10.0, 7.0]
    assert sampler.best().value == 7.0


def run_steps(sampler: StateSampler, rng: np.random.Generator, steps: int, k: int, rollouts: int) -> list:
    """Drive a sampler like the trainer would; returns the picked ids per step."""
    picks = []
    for _ in range(steps):
        parents = sampler.select(k, rng)
        picks.append([p.id for p in parents])
        for parent in parents:
            for _ in range(rollouts):
                if rng.random() < 0.2:
                    sampler.record(parent.id, None, None)
                else:
                    value = float(parent.value if math.isfinite(parent.value) else 0.0) + rng.normal()
                    sampler.record(parent.id, st(value, construction=[round(value, 3)]), value)
        sampler.flush()
    return picks


@pytest.mark.parametrize("name", ["puct", "greedy", "fixed"])
def test_json_round_trip_gives_identical_future(name):
    sampler = make_state_sampler(name)
    sampler.add_initial([st(None, code="empty"), st(0.0, code="zero"), st(-1.0, code="minus")])
    run_steps(sampler, np.random.default_rng(1), steps=4, k=3, rollouts=6)
    text = json.dumps(sampler.to_dict(), allow_nan=False)  # strict JSON: the -inf initial value is stored as null
    restored = StateSampler.from_dict(json.loads(text))
    assert type(restored) is type(sampler)
    assert restored.to_dict() == sampler.to_dict()
    future = run_steps(sampler, np.random.default_rng(2), steps=4, k=3, rollouts=6)
    future_restored = run_steps(restored, np.random.default_rng(2), steps=4, k=3, rollouts=6)
    assert future == future_restored
    assert restored.to_dict() == sampler.to_dict()
    if name == "puct":
        assert [r.score for r in restored.scores()] == [r.score for r in sampler.scores()]
    with pytest.raises(ValueError):
        (GreedySampler if name != "greedy" else PUCTSampler).from_dict(sampler.to_dict())


def test_greedy_round_robin_epsilon_and_top1_child():
    sampler = GreedySampler(epsilon=0.0)
    (root,) = sampler.add_initial([st(0.0, code="root")])
    assert [n.id for n in sampler.select(3, np.random.default_rng(0))] == [root.id] * 3  # no child yet
    kids = [sampler.record(root.id, child(v, str(v)), v) for v in (1.0, 4.0, 2.0)]
    grand = [sampler.record(kids[0].id, child(v, f"g{v}"), v) for v in (3.0, 0.5)]
    sampler.flush()  # top-1 child per parent: 4.0 of root, 3.0 of kids[0]
    assert sorted(nd.value for nd in sampler.nodes) == [0.0, 3.0, 4.0]
    # Initial states drop out once children exist; round-robin over the top-2 children by value.
    top = [kids[1].id, grand[0].id]
    assert [n.id for n in sampler.select(2, None)] == top
    assert [n.id for n in sampler.select(5, None)] == top + top + top[:1]
    # epsilon: per slot a coin, then (heads) a uniform index into the top-k; replayed with a twin rng.
    sampler.epsilon = 0.5
    picked = [n.id for n in sampler.select(40, np.random.default_rng(7))]
    twin = np.random.default_rng(7)
    expected = []
    for i in range(40):
        expected.append(top[int(twin.integers(2))] if twin.random() < 0.5 else top[i % 2])
    assert picked == expected
    # The same seed gives the same picks; epsilon = 1 still only returns top-k states.
    sampler.epsilon = 1.0
    first = [n.id for n in sampler.select(50, np.random.default_rng(3))]
    assert first == [n.id for n in sampler.select(50, np.random.default_rng(3))]
    assert set(first) == set(top) and first != top * 25
    with pytest.raises(ValueError, match="Generator"):
        sampler.select(2, None)


def test_fixed_always_the_initial_states():
    sampler = make_state_sampler("fixed")
    i0, i1 = sampler.add_initial([st(0.0, code="a"), st(1.0, code="b")])
    for step in range(3):
        assert [n.id for n in sampler.select(5, None)] == [i0.id, i1.id, i0.id, i1.id, i0.id]
        for v in (2.0 + step, -1.0):
            sampler.record(i0.id, child(v, f"{step}{v}"), v)
        sampler.flush()
    assert sampler.best().value == 4.0  # the best child seen is kept for reporting, never selected
    assert len(sampler) == 3


def test_factory():
    assert type(make_state_sampler("puct", c=0.5)) is PUCTSampler
    alias = make_state_sampler("puct_backprop", topk_children=3)
    assert type(alias) is PUCTSampler and alias.to_dict()["kind"] == "puct"
    assert make_state_sampler("greedy", epsilon=0.0).epsilon == 0.0
    assert type(make_state_sampler("fixed")) is FixedSampler
    assert PUCTSampler().select(3) == [] and PUCTSampler().best() is None
    with pytest.raises(ValueError, match="unknown state sampler 'mcts'") as err:
        make_state_sampler("mcts")
    assert "\n" not in str(err.value)
