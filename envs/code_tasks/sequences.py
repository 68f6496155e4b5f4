"""Families: longest increasing subsequence, longest common subsequence, edit distance."""

from __future__ import annotations

from envs.code_tasks.family import Family

# --- LIS ----------------------------------------------------------------------------------------------------


def lis_impl(nums, strict):
    import bisect

    tails = []
    for x in nums:
        i = bisect.bisect_left(tails, x) if strict else bisect.bisect_right(tails, x)
        if i == len(tails):
            tails.append(x)
        else:
            tails[i] = x
    return len(tails)


def lis_wrong(nums, strict):
    import bisect

    tails = []
    for x in nums:
        i = bisect.bisect_right(tails, x) if strict else bisect.bisect_left(tails, x)  # bug: swapped
        if i == len(tails):
            tails.append(x)
        else:
            tails[i] = x
    return len(tails)


def _lis_inputs(rng, params, n):
    inputs = [[[]], [[5, 5, 5, 5]], [[3, 1, 2, 2, 4, 4, 0]]]  # empty, all equal, duplicates on the path
    while len(inputs) < n:
        hi = rng.choice([3, 10, 100])  # small ranges force duplicates
        inputs.append([[rng.randint(0, hi) for _ in range(rng.randint(1, 25))]])
    return inputs


LIS = Family(
    name="lis", entry="longest_increasing", signature="longest_increasing(nums: list[int]) -> int",
    describe=lambda p: ("Return the length of the longest " + ("strictly increasing" if p["strict"] else
                        "non-decreasing") + " subsequence of the list (not necessarily contiguous). Example: "
                        + ("longest_increasing([1, 3, 3, 2, 4]) == 3." if p["strict"]
                           else "longest_increasing([1, 3, 3, 2, 4]) == 4.")),
    sample_params=lambda rng: {"strict": rng.random() < 0.5}, make_inputs=_lis_inputs,
    solve=lambda p, nums: lis_impl(nums, p["strict"]), impl=lis_impl, wrong_impl=lis_wrong, param_names=("strict",))

# --- LCS ----------------------------------------------------------------------------------------------------


def lcs_impl(a, b):
    prev = [0] * (len(b) + 1)
    for ca in a:
        cur = [0]
        for j, cb in enumerate(b):
            cur.append(prev[j] + 1 if ca == cb else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def lcs_wrong(a, b):
    best = 0  # bug: longest common *substring* (contiguous)
    prev = [0] * (len(b) + 1)
    for ca in a:
        cur = [0]
        for j, cb in enumerate(b):
            cur.append(prev[j] + 1 if ca == cb else 0)
        best = max(best, max(cur))
        prev = cur
    return best


def _string_pairs(rng, params, n, fixed):
    alphabet = params["alphabet"]
    inputs = list(fixed)
    while len(inputs) < n:
        a = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        b = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        inputs.append([a, b])
    return inputs


LCS = Family(
    name="lcs", entry="lcs_length", signature="lcs_length(a: str, b: str) -> int",
    describe=lambda p: ("Return the length of the longest common subsequence of two strings (characters in "
                        "order, not necessarily contiguous). Example: lcs_length('abcde', 'ace') == 3."),
    sample_params=lambda rng: {"alphabet": rng.choice(["ab", "abc", "acgt", "xyz"])},
    make_inputs=lambda rng, p, n: _string_pairs(rng, p, n, [["", "abc"], ["axbyc", "abc"]]),
    solve=lambda p, a, b: lcs_impl(a, b), impl=lcs_impl, wrong_impl=lcs_wrong)

# --- edit distance ------------------------------------------------------------------------------------------


def edit_impl(a, b):
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def edit_wrong(a, b):
    prev = list(range(len(b) + 1))  # bug: no substitutions, only insertions and deletions
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] if ca == cb else 10**9))
        prev = cur
    return prev[-1]


EDIT = Family(
    name="edit_distance", entry="edit_distance", signature="edit_distance(a: str, b: str) -> int",
    describe=lambda p: ("Return the Levenshtein distance between two strings: the minimum number of single-"
                        "character insertions, deletions and substitutions turning a into b. Example: "
                        "edit_distance('kitten', 'sitting') == 3."),
    sample_params=lambda rng: {"alphabet": rng.choice(["ab", "abc", "acgt", "xyz"])},
    make_inputs=lambda rng, p, n: _string_pairs(rng, p, n, [["", "ab"], ["abc", "abd"], ["flaw", "lawn"]]),
    solve=lambda p, a, b: edit_impl(a, b), impl=edit_impl, wrong_impl=edit_wrong)
