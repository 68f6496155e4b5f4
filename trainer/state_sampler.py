"""State reuse (TTT-Discover): which buffered states the next step's rollout groups start from.

A sampler keeps a buffer of Nodes (a State plus its value, lineage and visit statistics). Each step the
trainer calls `select(k, rng)` for the groups' parents, `record(parent_id, child, value)` once per finished
rollout (child None = failed rollout), then `flush()` to prune. Reference: TTT_DISCOVER.md section 2 and
`tinker_cookbook/recipes/ttt/sampler.py` of the original code.

Samplers: "puct" (alias "puct_backprop") the paper's PUCT rule with lineage blocking; "greedy"
(epsilon-greedy over the top-k states); "fixed" (always the initial states, the no-reuse ablation).

Ties are broken exactly as the original, so equal inputs give the same picks and the same buffer:
  - PUCT's rank prior is `np.argsort(np.argsort(-values))` (numpy's default, unstable quicksort: which of two
    tied states gets the better rank is numpy's choice, not buffer order), and the buffer cap keeps
    `np.argsort(values)[::-1]` (of two tied states the later one usually survives);
  - selection and the per-parent top-k use Python's stable sorts (descending, ties keep buffer order), and
    the top-k rebuilds the buffer as initial states, then each parent's children (parents in order of first
    appearance), as the original's flush does.
  - scale is max - min over the same values as the original, -inf included: with only initial states of
    unknown value it is nan and every score is nan, and the picks fall back to buffer order, as there.

Choices where the original is silent or fragile:
  - An initial state whose value is None or not finite gets value -inf (the original: None -> -inf).
  - A rollout whose child has a None or non-finite value counts as failed (the original counts a "correct"
    child with value None nowhere: no n, no T).
  - Task-specific admission rules (AC construction length 1000..100000, Erdos <= 1000) are the env's
    `admits(state)`, which the trainer passes to `record`; re-drawing random initial AC constructions when
    picked is not done.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from envs.base import State, is_finite_number


@dataclass
class Node:
    """One buffered state. `ancestors` are the stored lineage ids, nearest first (parent, grandparent...)."""

    id: int
    parent_id: int | None
    state: State
    value: float
    is_initial: bool
    ancestors: list[int] = field(default_factory=list)
    n: int = 0  # finished rollouts from this node or any stored descendant
    m: float | None = None  # running max value of this node's DIRECT children

    def to_dict(self) -> dict:
        state = self.state.to_dict()
        state["construction"] = _plain(state["construction"])
        return {"id": self.id, "parent_id": self.parent_id, "state": state,
                "value": None if math.isinf(self.value) else self.value,  # strict JSON has no -inf
                "is_initial": self.is_initial, "ancestors": list(self.ancestors), "n": self.n, "m": self.m}

    @classmethod
    def from_dict(cls, d: dict) -> "Node":
        value = -math.inf if d["value"] is None else float(d["value"])
        return cls(id=d["id"], parent_id=d["parent_id"], state=State.from_dict(d["state"]), value=value,
                   is_initial=d["is_initial"], ancestors=list(d["ancestors"]), n=d["n"], m=d["m"])


def _plain(x: Any) -> Any:
    """numpy arrays/scalars and tuples as plain JSON values (lists, floats, ints)."""
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    return x


def dedup_key(state: State) -> tuple[str, str] | None:
    """The construction (as JSON) if it has one, else the code string, else None (never a duplicate).

    The original uses tuple(construction) or the code; JSON also handles nested and numpy constructions.
    -0.0 is written as 0.0, since the original's tuples compare them equal.
    """
    construction = _signless_zeros(_plain(state.construction))
    if construction:
        return ("construction", json.dumps(construction, sort_keys=True))
    if state.code:
        return ("code", state.code)
    return None


def _signless_zeros(x: Any) -> Any:
    if isinstance(x, float):
        return x + 0.0  # -0.0 + 0.0 == +0.0; every other float is unchanged
    if isinstance(x, list):
        return [_signless_zeros(v) for v in x]
    if isinstance(x, dict):
        return {k: _signless_zeros(v) for k, v in x.items()}
    return x


def _by_value_desc(nodes: list[Node]) -> list[Node]:
    return sorted(nodes, key=lambda node: node.value, reverse=True)  # stable: ties keep buffer order


class StateSampler:
    """The buffer, visit statistics, insertion and JSON round-trip that all samplers share."""

    kind = "base"

    def __init__(self) -> None:
        self._nodes: list[Node] = []  # buffer order matters only to break exact ties
        self._by_id: dict[int, Node] = {}
        self._keys: set[tuple[str, str]] = set()
        self.T = 0  # finished rollouts (valid and failed)
        self.next_id = 0

    # ---- interface ----
    def add_initial(self, states: list[State]) -> list[Node]:
        added = []
        for state in states:
            value = float(state.value) if is_finite_number(state.value) else -math.inf
            added.append(self._insert(Node(self.next_id, None, state, value, is_initial=True)))
        return added

    def select(self, k: int, rng: np.random.Generator | None = None) -> list[Node]:
        raise NotImplementedError

    def record(self, parent_id: int, child: State | None, value: float | None, admit: bool = True,
               parent: Node | None = None) -> Node | None:
        """Count one finished rollout from `parent_id`; insert its child if valid, admitted and new. Returns the
        new node. `admit` is the env's `admits(child)`: a child it refuses (e.g. an AC1 sequence of 500 pieces)
        still counts for n, T and its parent's m, as in the original, but does not enter the buffer.

        The parent must still be in the buffer (record every rollout of a step before that step's flush), or be
        passed as `parent`: the node as it was selected, when a flush pruned it while its rollouts were in flight
        (pipeline=async). Its lineage then still counts, and a valid child enters the buffer as a pruned
        child's descendants stay: with its parent id kept.
        """
        parent = self._by_id.get(parent_id, parent)
        if parent is None:
            raise KeyError(f"parent {parent_id} is not in the buffer (was it pruned by a flush?)")
        lineage = [parent_id] + parent.ancestors
        self.T += 1
        for ancestor_id in lineage:  # pruned ancestors have no stats left to update
            if ancestor_id in self._by_id:
                self._by_id[ancestor_id].n += 1
        if child is None or not is_finite_number(value):
            return None
        value = float(value)
        # The running max is updated before the duplicate check, so a duplicate child still raises m.
        parent.m = value if parent.m is None else max(parent.m, value)
        if not admit:
            return None
        key = dedup_key(child)
        if key is not None and key in self._keys:
            return None
        return self._insert(Node(self.next_id, parent_id, child, value, False, ancestors=lineage))

    def flush(self) -> None:
        pass

    def best(self) -> Node | None:
        return max(self._nodes, key=lambda node: node.value) if self._nodes else None

    def __len__(self) -> int:
        return len(self._nodes)

    @property
    def nodes(self) -> list[Node]:
        return list(self._nodes)

    def node(self, node_id: int) -> Node:
        return self._by_id[node_id]

    def params(self) -> dict:
        return {}

    def to_dict(self) -> dict:
        return {"kind": self.kind, "params": self.params(), "T": self.T, "next_id": self.next_id,
                "nodes": [node.to_dict() for node in self._nodes]}

    @classmethod
    def from_dict(cls, d: dict) -> "StateSampler":
        sampler_cls = SAMPLERS[d["kind"]]
        if not issubclass(sampler_cls, cls):
            raise ValueError(f"a {d['kind']!r} sampler dict cannot be loaded as {cls.__name__}")
        sampler = sampler_cls(**d["params"])
        sampler._set_nodes([Node.from_dict(nd) for nd in d["nodes"]])
        sampler.T, sampler.next_id = d["T"], d["next_id"]
        return sampler

    # ---- helpers ----
    def _insert(self, node: Node) -> Node:
        self._nodes.append(node)
        self._by_id[node.id] = node
        key = dedup_key(node.state)
        if key is not None:
            self._keys.add(key)
        self.next_id = max(self.next_id, node.id + 1)
        return node

    def _set_nodes(self, nodes: list[Node]) -> None:
        """Replace the buffer; duplicates are judged against the buffer as it now is (as the original)."""
        self._nodes = list(nodes)
        self._by_id = {node.id: node for node in self._nodes}
        self._keys = {key for key in map(dedup_key, (node.state for node in self._nodes)) if key is not None}

    def _initial_nodes(self) -> list[Node]:
        return [node for node in self._nodes if node.is_initial]

    def _keep_topk_children(self, k: int) -> None:
        """Keep the k best direct children of each parent (k = 0 keeps all), as the original's flush.

        The buffer is rebuilt as initial states, then each parent's kept children (parents in order of first
        appearance, children best first). A pruned child's own descendants stay: their parent id is kept.
        """
        if k <= 0:
            return
        children_by_parent: dict[int, list[Node]] = {}
        for node in self._nodes:
            if not node.is_initial:
                children_by_parent.setdefault(node.parent_id, []).append(node)
        kept = [node for children in children_by_parent.values() for node in _by_value_desc(children)[:k]]
        self._set_nodes(self._initial_nodes() + kept)

    def _cap(self, max_size: int) -> None:
        """Over max_size: keep every initial state, then the best by value up to max_size; buffer order kept.

        "Best" is the original's `np.argsort(values)[::-1]`, so ties go as numpy's default sort leaves them.
        """
        if len(self._nodes) <= max_size:
            return
        keep = {node.id for node in self._initial_nodes()}
        for i in np.argsort([node.value for node in self._nodes])[::-1]:
            if len(keep) >= max_size:
                break
            keep.add(self._nodes[i].id)
        self._set_nodes([node for node in self._nodes if node.id in keep])


@dataclass
class PUCTScore:
    """One row of the PUCT table: score = Q + bonus, bonus = c * scale * P * sqrt(1 + T) / (1 + n)."""

    node_id: int
    Q: float
    P: float
    bonus: float
    score: float


class PUCTSampler(StateSampler):
    """TTT-Discover's PUCT state reuse, reproducing the released code's counting deliberately:

    - group_size is forced to 1 in the original constructor (TTT_DISCOVER.md known bug 3), so T and n count
      single rollouts, not groups: sqrt(1 + T) / (1 + n) with T, n in rollouts. We keep that.
    - m(i) is the max value of i's DIRECT children only; older ancestors get n += 1 but no m update, so Q of
      a grandparent does not see its grandchildren. And Q = m(i) once n(i) > 0, even when every child is
      worse than i itself (Q can fall below i's own value). We keep both.
    - n(i) > 0 with no valid child yet (only failed rollouts) leaves Q = i's own value, as the original.
    """

    kind = "puct"

    def __init__(self, c: float = 1.0, topk_children: int = 2, max_buffer_size: int = 1000):
        super().__init__()
        self.c = float(c)
        self.topk_children = int(topk_children)
        self.max_buffer_size = int(max_buffer_size)

    def params(self) -> dict:
        return {"c": self.c, "topk_children": self.topk_children, "max_buffer_size": self.max_buffer_size}

    def scale(self) -> float:
        """max - min value over non-initial states (all states while there are none), floored at 1e-6.

        As the original, -inf values take part: nan (not floored: max(nan, 1e-6) is nan) when they are all -inf.
        """
        non_initial_N = [node.value for node in self._nodes if not node.is_initial]
        pool_N = non_initial_N or [node.value for node in self._nodes]
        if not pool_N:
            return 1.0
        with np.errstate(invalid="ignore"):  # -inf - -inf is nan, as in the original
            return max(float(np.max(pool_N) - np.min(pool_N)), 1e-6)

    def prior(self) -> np.ndarray:
        """Rank prior in buffer order: weight N - rank (best value rank 0), normalised; ranks from numpy's
        default argsort, whose order among tied values is numpy's, as in the original."""
        values_N = np.array([node.value for node in self._nodes], dtype=np.float64)
        rank_N = np.argsort(np.argsort(-values_N))
        weight_N = (len(values_N) - rank_N).astype(np.float64)
        return weight_N / weight_N.sum()

    def scores(self) -> list[PUCTScore]:
        """The PUCT table in buffer order, each term computed in the original's order of operations."""
        P_N = self.prior()
        scale, sqrt_T = self.scale(), math.sqrt(1.0 + self.T)
        table = []
        for node, P in zip(self._nodes, P_N.tolist()):
            Q = node.m if node.n > 0 and node.m is not None else node.value
            bonus = self.c * scale * P * sqrt_T / (1.0 + node.n)
            table.append(PUCTScore(node.id, Q, P, bonus, Q + bonus))
        return table

    def select(self, k: int, rng: np.random.Generator | None = None) -> list[Node]:
        """Deterministic: best (score, value) first, then block its whole lineage; rng is unused.

        Returns fewer than k nodes once every lineage is blocked: at the first step there is one pick per
        initial state, so add k initial states to fill k groups (the original creates batch_size of them).
        """
        table = self.scores()
        order = sorted(range(len(table)), key=lambda i: (table[i].score, self._nodes[i].value), reverse=True)
        picked: list[Node] = []
        blocked: set[int] = set()
        for i in order:
            if len(picked) >= k:
                break
            node = self._nodes[i]
            if node.id in blocked:
                continue
            picked.append(node)
            blocked.update(self._lineage(node))
        return picked

    def _lineage(self, node: Node) -> set[int]:
        """The node, its stored ancestors and every buffered node that lists it as an ancestor."""
        descendants = {other.id for other in self._nodes if node.id in other.ancestors}
        return {node.id, *node.ancestors, *descendants}

    def flush(self) -> None:
        self._keep_topk_children(self.topk_children)
        self._cap(self.max_buffer_size)


class GreedySampler(StateSampler):
    """Epsilon-greedy: the top-k states by value round-robin; with probability epsilon a uniformly random one
    of those top-k instead (the original's buffer is truncated to batch_size, so its random pick is among the
    top batch_size states too). Initial states are used only while no child exists, as in the original.

    topk_children = 1 keeps each parent's best child at flush. (In the original this filter is applied per
    update_states call, which receives one rollout at a time, so it never prunes: topk_children = 0 here.)
    """

    kind = "greedy"

    def __init__(self, epsilon: float = 0.125, topk_children: int = 1, max_buffer_size: int = 1000):
        super().__init__()
        self.epsilon = float(epsilon)
        self.topk_children = int(topk_children)
        self.max_buffer_size = int(max_buffer_size)

    def params(self) -> dict:
        return {"epsilon": self.epsilon, "topk_children": self.topk_children,
                "max_buffer_size": self.max_buffer_size}

    def select(self, k: int, rng: np.random.Generator | None = None) -> list[Node]:
        if self.epsilon > 0 and rng is None:
            raise ValueError("GreedySampler.select needs a numpy Generator when epsilon > 0")
        children = [node for node in self._nodes if not node.is_initial]
        top = _by_value_desc(children)[:k] if children else self._initial_nodes()
        if not top:
            return []
        picked = []
        for i in range(k):
            # Same draw order as the original: the coin first, then (only on heads) the uniform index.
            if self.epsilon > 0 and rng.random() < self.epsilon and len(top) > 1:
                picked.append(top[int(rng.integers(len(top)))])
            else:
                picked.append(top[i % len(top)])
        return picked

    def flush(self) -> None:
        self._keep_topk_children(self.topk_children)
        self._cap(self.max_buffer_size)


class FixedSampler(StateSampler):
    """No state reuse: always the initial states (round-robin). Children are kept only for best()."""

    kind = "fixed"

    def select(self, k: int, rng: np.random.Generator | None = None) -> list[Node]:
        initial = self._initial_nodes()
        return [initial[i % len(initial)] for i in range(k)] if initial else []

    def flush(self) -> None:
        children = _by_value_desc([node for node in self._nodes if not node.is_initial])
        self._set_nodes(self._initial_nodes() + children[:1])


SAMPLERS: dict[str, type[StateSampler]] = {"puct": PUCTSampler, "puct_backprop": PUCTSampler,
                                           "greedy": GreedySampler, "fixed": FixedSampler}


def make_state_sampler(name: str, **kw) -> StateSampler:
    """A sampler by name: puct (alias puct_backprop), greedy or fixed."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown state sampler {name!r}: use puct, puct_backprop, greedy or fixed")
    return SAMPLERS[name](**kw)
