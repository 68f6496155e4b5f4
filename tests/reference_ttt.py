"""TTT-Discover's rules restated from its source, for agreement tests; imports nothing from this project.

Read from github.com/test-time-training/discover @ 96df74f (MIT):
  - tinker_cookbook/rl/train.py::compute_advantages        -> entropic_adaptive_beta, entropic, mean_baseline
  - tinker_cookbook/recipes/ttt/sampler.py::PUCTSampler    -> RefPUCT (score, selection, update, flush, cap)
  - tasks/alphaevolve_cp/task.py + verifier.py::validate_packing -> cp_sum_radii
  - tasks/alphaevolve_ac/verifier_ae.py::evaluate_sequence + recipes/ttt/env_ac.py::_compute_reward -> ac1_c1
  - tasks/alphaevolve_ac2/ae_verifier.py::evaluate_sequence                                  -> ac2_c2

Each function follows the original's data types and order of operations (float32 torch for advantages, Python
lists and builtins for AC1, numpy argsort for PUCT ranks), since the tests compare bit for bit. Written for the
tests, not copied: the control flow is restated, unrelated parts (files, locks, logging, prompts) are left out.
"""

from __future__ import annotations

import math

import numpy as np
import torch

# ---------------------------------------------------------------- advantages (rl/train.py)


def entropic_adaptive_beta(rewards: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, beta), both float32 tensors."""
    r = torch.tensor(rewards, dtype=torch.float32)  # the original: torch.tensor(python floats), default float32
    k = r.shape[0]
    delta = np.log(2)
    if k < 2:
        beta = r.new_tensor(0.0)
    else:
        log_k = math.log(k)

        def kl_hat(b: float) -> float:
            logits = r.new_tensor(b) * (r - r.max(dim=0, keepdim=True).values)
            logq = logits - torch.logsumexp(logits, dim=0, keepdim=True)
            return float((torch.exp(logq) * (logq + log_k)).sum(dim=0).mean().item())

        lo, hi = 0.0, 1.0
        beta = None
        if kl_hat(hi) < delta:
            while hi < 1e6 and kl_hat(hi) < delta:
                hi *= 2.0
            if kl_hat(hi) < delta:
                beta = r.new_tensor(hi)
        if beta is None:
            for _ in range(60):
                mid = 0.5 * (lo + hi)
                if kl_hat(mid) < delta:
                    lo = mid
                else:
                    hi = mid
            beta = r.new_tensor(hi)
    e = torch.exp(beta * (r - r.max(dim=0, keepdim=True).values))
    z = e if k == 1 else (e.sum(dim=0, keepdim=True) - e) / (k - 1)
    return e / (z + 1e-12) - 1.0, beta


def entropic(rewards: list[float], beta: float) -> torch.Tensor:
    r = torch.tensor(rewards, dtype=torch.float32)
    e = torch.exp(beta * (r - r.max(dim=-1, keepdim=True)[0]))
    k = e.shape[0]
    z = e if k == 1 else (e.sum() - e) / (k - 1)
    return e / (z + 1e-12) - 1.0


def mean_baseline(rewards: list[float]) -> torch.Tensor:
    r = torch.tensor(rewards, dtype=torch.float32)
    return r - r.mean()


# ---------------------------------------------------------------- AC1 (verifier_ae.py, env_ac.py)


def ac1_c1(sequence) -> float:
    """evaluate_sequence: C1, or inf for an invalid sequence (the reward is then 0)."""
    if not isinstance(sequence, list) or not sequence:
        return np.inf
    for x in sequence:
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            return np.inf
        if np.isnan(x) or np.isinf(x):
            return np.inf
    seq = [float(x) for x in sequence]
    seq = [max(0, x) for x in seq]  # Python builtins, elementwise, as the original
    seq = [min(1000.0, x) for x in seq]
    n = len(seq)
    max_b = max(np.convolve(seq, seq))
    sum_a = np.sum(seq)
    if sum_a < 0.01:
        return np.inf
    return float(2 * n * max_b / (sum_a ** 2))


def ac1_reward(c1: float) -> float:
    return 1 / c1 if c1 != np.inf else 0.0


# ---------------------------------------------------------------- AC2 (alphaevolve_ac2/ae_verifier.py)


def ac2_c2(sequence) -> float | None:
    """evaluate_sequence: C2, or None where the original raises ValueError (the task then scores invalid)."""
    if not isinstance(sequence, list) or not sequence:
        return None
    for x in sequence:
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            return None
        if np.isnan(x) or np.isinf(x):
            return None
    seq = [max(0, float(x)) for x in sequence]
    if np.sum(seq) < 0.01:  # checked before the cap, as the original does
        return None
    seq = [min(1000.0, x) for x in seq]
    conv = np.convolve(seq, seq)
    m = len(conv)
    widths = np.diff(np.linspace(-0.5, 0.5, m + 2))
    y = np.concatenate(([0], conv, [0]))
    l2_squared = 0.0
    for i in range(m + 1):  # one interval at a time, left to right
        y1, y2, h = y[i], y[i + 1], widths[i]
        l2_squared += (h / 3) * (y1 ** 2 + y1 * y2 + y2 ** 2)
    norm_1 = np.sum(np.abs(conv)) / (m + 1)
    norm_inf = np.max(np.abs(conv))
    return float(l2_squared / (norm_1 * norm_inf))


# ---------------------------------------------------------------- circle packing (alphaevolve_cp)


def cp_sum_radii(centers, radii, n: int) -> float | None:
    """CirclePackingTask.verify + get_reward: the sum of radii, or None when invalid."""
    centers, radii = np.array(centers), np.array(radii)
    if centers.shape != (n, 2) or radii.shape != (n,):
        return None
    if np.isnan(centers).any() or np.isnan(radii).any():
        return None
    for i in range(n):
        if radii[i] < 0 or np.isnan(radii[i]):
            return None
    for i in range(n):
        x, y = centers[i]
        r = radii[i]
        if x - r < -1e-12 or x + r > 1 + 1e-12 or y - r < -1e-12 or y + r > 1 + 1e-12:
            return None
    for i in range(n):
        for j in range(i + 1, n):
            dist = np.sqrt(np.sum((centers[i] - centers[j]) ** 2))
            if dist < radii[i] + radii[j] - 1e-12:
                return None
    return float(np.sum(radii))


# ---------------------------------------------------------------- PUCT (recipes/ttt/sampler.py)

AC_MIN_LEN, AC_MAX_LEN = 1000, 100000


class RefState:
    def __init__(self, id: int, value, construction=None, parents=None):
        self.id = id
        self.value = value
        self.construction = construction
        self.parents = list(parents or [])  # ancestor ids, nearest first (the original: [{"id": ...}, ...])


class RefPUCT:
    """PUCTSampler for an AC env (InequalitiesState), group_size forced to 1 as in its constructor.

    Ids are handed out in insertion order so that tests can match states with the project's sampler.
    """

    def __init__(self, initial_values: list, c: float = 1.0, topk_children: int = 2, max_buffer_size: int = 1000):
        self.c, self.topk, self.max_size = c, topk_children, max_buffer_size
        self.states = [RefState(i, v) for i, v in enumerate(initial_values)]
        self.initial_ids = {s.id for s in self.states}
        self.next_id = len(self.states)
        self.n: dict[int, int] = {}
        self.m: dict[int, float] = {}
        self.T = 0
        self.last_table: list[tuple] = []

    def _vals(self) -> np.ndarray:
        return np.array([float(s.value if s.value is not None else float("-inf")) for s in self.states])

    def sample(self, num: int) -> list[int]:
        vals = self._vals()
        mask = np.array([s.id not in self.initial_ids for s in self.states])
        v = vals[mask] if mask.any() else vals
        scale = float(max(np.max(v) - np.min(v), 1e-6)) if v.size > 0 else 1.0
        N = len(vals)
        ranks = np.argsort(np.argsort(-vals))
        weights = (N - ranks).astype(np.float64)
        P = weights / weights.sum()
        sqrt_t = np.sqrt(1.0 + self.T / 1)
        rows = []
        for i, s in enumerate(self.states):
            n = self.n.get(s.id, 0)
            m = self.m.get(s.id, vals[i])
            Q = m if n > 0 else vals[i]
            bonus = self.c * scale * P[i] * sqrt_t / (1.0 + n / 1)
            rows.append((Q + bonus, vals[i], s, n, Q, P[i], bonus))
        self.last_table = [(r[2].id, r[4], r[5], r[6], r[0]) for r in rows]
        rows.sort(key=lambda x: (x[0], x[1]), reverse=True)
        if num <= 1:
            return [r[2].id for r in rows[:num]]
        children: dict[int, set[int]] = {}
        for s in self.states:
            for pid in s.parents:
                children.setdefault(pid, set()).add(s.id)
        picked, blocked = [], set()
        for row in rows:
            s = row[2]
            if s.id in blocked:
                continue
            picked.append(s.id)
            lineage = {s.id, *s.parents}
            queue, seen = [s.id], {s.id}
            while queue:
                for cid in children.get(queue.pop(0), []):
                    if cid not in seen:
                        seen.add(cid)
                        lineage.add(cid)
                        queue.append(cid)
            blocked |= lineage
            if len(picked) >= num:
                break
        return picked

    def _state(self, sid: int) -> RefState:
        return next(s for s in self.states if s.id == sid)

    def update(self, parent: RefState, construction: list, value: float) -> None:
        """update_states([child], [parent]) for one valid child, as env_ac.py calls it per rollout."""
        self.m[parent.id] = max(self.m.get(parent.id, value), value)
        for aid in [parent.id] + parent.parents:
            self.n[aid] = self.n.get(aid, 0) + 1
        self.T += 1
        if construction and not (AC_MIN_LEN <= len(construction) <= AC_MAX_LEN):
            return
        # The original rebuilds `existing` from the buffer on every call; between flushes the buffer only
        # grows, so keeping the set and rebuilding it at flush is the same set, without rehashing every tuple.
        key = tuple(construction) if construction else None
        if key is not None and key in self._existing():
            return
        self.states.append(RefState(self.next_id, value, construction, [parent.id] + parent.parents))
        self.next_id += 1
        if key is not None:
            self._keys.add(key)

    def _existing(self) -> set:
        if getattr(self, "_keys", None) is None:
            self._keys = {tuple(s.construction) for s in self.states if s.construction}
        return self._keys

    def failed(self, parent: RefState) -> None:
        for aid in [parent.id] + parent.parents:
            self.n[aid] = self.n.get(aid, 0) + 1
        self.T += 1

    def flush(self) -> None:
        self._keys = None  # pruning removes keys: rebuild from the buffer on next use
        if self.topk > 0:
            by_parent: dict[int, list[RefState]] = {}
            no_parent = []
            for s in self.states:
                if s.parents:
                    by_parent.setdefault(s.parents[0], []).append(s)
                else:
                    no_parent.append(s)
            kept = []
            for group in by_parent.values():
                group.sort(key=lambda x: x.value if x.value is not None else float("-inf"), reverse=True)
                kept.extend(group[:self.topk])
            self.states = no_parent + kept
        if len(self.states) > self.max_size:
            values = [s.value if s.value is not None else float("-inf") for s in self.states]
            order = list(np.argsort(values)[::-1])
            keep = {i for i, s in enumerate(self.states) if s.id in self.initial_ids}
            for i in order:
                if len(keep) >= self.max_size:
                    break
                keep.add(i)
            self.states = [self.states[i] for i in sorted(keep)]
