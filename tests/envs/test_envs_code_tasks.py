"""Code tasks: every family generates valid problems; the reference passes every hidden test, a wrong
solution does not; expected outputs agree with independent brute-force / known values."""

from __future__ import annotations

import itertools
import operator
import re
from collections import deque
from fractions import Fraction

import pytest

from envs import code_tasks
from envs.base import State
from envs.code_env import CodeEnv
from envs.pool import VerifierPool

SEEDS = (0, 1)
PROBLEMS = range(3)


# --- independent references (different algorithms from envs/code_tasks) ------------------------------------

def rpn_tree(tokens):
    def build(i):  # parse from the right: returns (value, next index)
        tok = tokens[i]
        if tok not in "+-*/" or tok.lstrip("-").isdigit():
            return Fraction(int(tok)), i - 1
        right, j = build(i - 1)
        left, k = build(j)
        value = {"+": left + right, "-": left - right, "*": left * right}.get(tok)
        return (Fraction(int(left / right)) if tok == "/" else value), k  # int() truncates toward zero
    return int(build(len(tokens) - 1)[0])


def balanced_by_reduction(s, pairs):
    s = "".join(c for c in s if c in pairs)
    while True:
        t = s
        for i in range(0, len(pairs), 2):
            t = t.replace(pairs[i:i + 2], "")
        if t == s:
            return s == ""
        s = t


def edit_recursive(a, b):
    from functools import lru_cache

    @lru_cache(None)
    def d(i, j):
        if i == len(a) or j == len(b):
            return len(a) - i + len(b) - j
        return min(d(i + 1, j) + 1, d(i, j + 1) + 1, d(i + 1, j + 1) + (a[i] != b[j]))
    return d(0, 0)


def lis_brute(nums, strict):
    best = 0
    for mask in range(1 << len(nums)):
        seq = [x for i, x in enumerate(nums) if mask >> i & 1]
        if all((x < y) if strict else (x <= y) for x, y in zip(seq, seq[1:])):
            best = max(best, len(seq))
    return best


def knapsack_brute(w, v, cap):
    return max(sum(v[i] for i in s) for r in range(len(w) + 1) for s in itertools.combinations(range(len(w)), r)
               if sum(w[i] for i in s) <= cap)


def coins_bfs(coins, amount):
    seen, queue = {0}, deque([(0, 0)])
    while queue:
        total, n = queue.popleft()
        if total == amount:
            return n
        for c in coins:
            if total + c <= amount and total + c not in seen:
                seen.add(total + c)
                queue.append((total + c, n + 1))
    return -1


def merge_by_coverage(intervals):
    cells = sorted({x for s, e in intervals for x in range(2 * s, 2 * e + 1)})  # doubled grid: touching -> shared cell
    out = []
    for x in cells:
        if out and x == out[-1][1] * 2 + 1:
            out[-1][1] = (x + 1) // 2 if x % 2 else x // 2
        elif out and x <= 2 * out[-1][1]:
            continue
        else:
            out.append([x // 2, x // 2])
    return out


def lcs_brute(a, b):
    best = 0
    for mask in range(1 << len(a)):
        sub = [c for i, c in enumerate(a) if mask >> i & 1]
        it = iter(b)
        if all(c in it for c in sub):
            best = max(best, len(sub))
    return best


def islands_union_find(grid, diagonal):
    cells = {(r, c) for r, row in enumerate(grid) for c, x in enumerate(row) if x == 1}
    parent = {x: x for x in cells}

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x
    for r, c in cells:
        for dr, dc in ([(0, 1), (1, 0)] + ([(1, 1), (1, -1)] if diagonal else [])):
            if (r + dr, c + dc) in cells:
                parent[find((r, c))] = find((r + dr, c + dc))
    return len({find(x) for x in cells})


def second_by_scan(xs):
    first = second = None
    for x in xs:
        if first is None or x > first:
            first, second = x, first
        elif x != first and (second is None or x > second):
            second = x
    return second


CHAR_CLASSES = {"vowels": "[aeiouAEIOU]", "digits": "[0-9]", "spaces": " "}

QUEENS = {1: 1, 2: 0, 3: 0, 4: 2, 5: 10, 6: 4, 7: 40, 8: 92}  # OEIS A000170

INDEPENDENT = {
    "rpn": lambda p, tokens: rpn_tree(tokens),
    "brackets": lambda p, s: balanced_by_reduction(s, p["pairs"]),
    "edit_distance": lambda p, a, b: edit_recursive(a, b),
    "lis": lambda p, nums: lis_brute(nums, p["strict"]) if len(nums) <= 14 else None,
    "knapsack": lambda p, w, v, c: knapsack_brute(w, v, c),
    "coin_change": lambda p, coins, amount: coins_bfs(coins, amount),
    "intervals": lambda p, iv: merge_by_coverage(iv),
    "n_queens": lambda p, n: QUEENS[n],
    "lcs": lambda p, a, b: lcs_brute(a, b) if len(a) <= 12 else None,
    "islands": lambda p, grid: islands_union_find(grid, p["diagonal"]),
    "unique_sorted": lambda p, xs: [x for x in range(max(xs, default=0), min(xs, default=0) - 1, -1) if x in xs][
        ::1 if p["descending"] else -1],
    "sum_multiples": lambda p, xs: sum(x for x in xs if (x // p["k"]) * p["k"] == x),
    "count_chars": lambda p, s: len(re.findall(CHAR_CLASSES[p["kind"]], s)),
    "second_largest": lambda p, xs: second_by_scan(xs),
    "running": lambda p, xs: list(itertools.accumulate(xs, operator.add if p["kind"] == "sum" else max)),
    "word_lengths": lambda p, s: [len(w) for w in re.findall(r"\S+", s)],
}


def test_at_least_eight_families_with_independent_checks():
    assert len(code_tasks.FAMILIES) >= 8 and set(INDEPENDENT) == set(code_tasks.FAMILIES)


@pytest.mark.parametrize("family", sorted(code_tasks.FAMILIES))
def test_family_generates_valid_deterministic_problems(family):
    checked = 0
    for seed in SEEDS:
        for k in PROBLEMS:
            p = code_tasks.problem(family, k, seed, 10)
            assert len(p.tests) >= 5 and len(p.expected) == len(p.tests)
            assert p == code_tasks.FAMILIES[family].problem(k, seed, 10)  # same seed, same problem
            for args, want in zip(p.tests, p.expected):
                independent = INDEPENDENT[family](p.params, *args)
                if independent is not None:
                    assert code_tasks.same_output(code_tasks.canonical(independent), want), (args, independent, want)
                    checked += 1
    assert checked >= 20
    assert code_tasks.problem(family, 0, 0, 10).tests != code_tasks.problem(family, 1, 0, 10).tests or family == "n_queens"


def _run_program(source: str, problem) -> list:
    namespace = {}
    exec(source, namespace)  # our own reference / buggy programs, never model output
    return [code_tasks.canonical(namespace[problem.entry](*args)) for args in problem.tests]


@pytest.mark.parametrize("family", sorted(code_tasks.FAMILIES))
def test_every_generated_problem_separates_reference_and_wrong_programs(family):
    fam = code_tasks.FAMILIES[family]
    for seed in SEEDS:
        for k in PROBLEMS:
            p = code_tasks.problem(family, k, seed, 10)
            assert _run_program(fam.program(p.params), p) == p.expected
            wrong = _run_program(fam.program(p.params, wrong=True), p)
            assert any(not code_tasks.same_output(w, e) for w, e in zip(wrong, p.expected)), (family, seed, k)


def test_reference_passes_and_wrong_solution_fails_in_the_sandbox():
    env = CodeEnv(families=list(code_tasks.FAMILIES), problems_per_family=1, timeout_s=20)
    completions, states, kinds = [], [], []
    for name, fam in code_tasks.FAMILIES.items():
        for k in range(1):
            p = env.problem(f"{name}/{k}")
            for wrong in (False, True):
                completions.append(f"```python\n{fam.program(p.params, wrong=wrong)}```")
                states.append(State(task_id=p.task_id))
                kinds.append((p.task_id, wrong))
    results = VerifierPool(env, backend="local", num_cpus=2).evaluate(completions, states)
    for (task_id, wrong), r in zip(kinds, results):
        assert r.status == "ok", (task_id, r.message)
        if wrong:
            assert r.reward < 1.0 and not r.extra["all_passed"], task_id
        else:
            assert r.reward == 1.0 and r.extra["all_passed"] and r.extra["passed"] == r.extra["total"] >= 5, task_id


def test_code_env_rewards_fractions_and_reports_failures_without_leaking_answers():
    env = CodeEnv(families=["n_queens"], problems_per_family=1, timeout_s=10)
    p = env.problem("n_queens/0")
    table = {n: v for n, v in QUEENS.items() if n <= 5}  # right for n <= 5 only
    program = f"def count_queens(n):\n    return {table!r}.get(n, -1)\n"
    r = env.verify(program, State(task_id="n_queens/0"))
    want = sum(args[0] <= 5 for args in p.tests) / len(p.tests)
    assert r.reward == pytest.approx(want) and 0 < r.reward < 1
    assert "hidden test" in r.message and "92" not in r.message
    crash = env.verify("def count_queens(n):\n    raise ValueError('boom')\n", State(task_id="n_queens/0"))
    assert crash.reward == 0.0 and "ValueError" in crash.message
    assert env.verify("def other(n):\n    return 1\n", State(task_id="n_queens/0")).status == "format_error"
    with pytest.raises(ValueError, match="unknown code task"):
        env.problem("n_queens/5")
    with pytest.raises(ValueError, match="unknown code families"):
        CodeEnv(families=["sorting"])
