"""Entry-level families for small real models: one short function each, with edge cases in the hidden tests.

Why they exist: a 135M-parameter instruct model scores 0 on the algorithmic families (and on CP26) from the
start, so RL has no signal. On these it writes a plausible function, often with the wrong name, the wrong
order or a missed edge case (empty input, ties, negatives), so the fraction of hidden tests passed starts
above 0 with room to rise, which is what a visible test-time-RL run on a CPU needs.
"""

from __future__ import annotations

from envs.code_tasks.family import Family

# --- sorted unique values -----------------------------------------------------------------------------------


def unique_impl(xs, descending):
    return sorted(set(xs), reverse=descending)


def unique_wrong(xs, descending):
    return sorted(xs, reverse=descending)  # bug: duplicates stay


def _int_lists(rng, params, n, fixed):
    inputs = [list(args) for args in fixed]
    while len(inputs) < n:
        size = rng.randint(1, 9)
        inputs.append([[rng.randint(-params["span"], params["span"]) for _ in range(size)]])
    return inputs


UNIQUE = Family(
    name="unique_sorted", entry="unique_sorted", signature="unique_sorted(xs: list[int]) -> list[int]",
    describe=lambda p: ("Return the distinct values of xs, each once, sorted in "
                        f"{'descending' if p['descending'] else 'ascending'} order. Example: "
                        f"unique_sorted([3, 1, 3, 2]) == {[3, 2, 1] if p['descending'] else [1, 2, 3]}."),
    sample_params=lambda rng: {"descending": rng.random() < 0.5, "span": rng.choice([5, 9, 50])},
    make_inputs=lambda rng, p, n: _int_lists(rng, p, n, [[[]], [[4, 4, 4]], [[-1, 2, -1, 0]]]),
    solve=lambda p, xs: unique_impl(xs, p["descending"]), impl=unique_impl, wrong_impl=unique_wrong,
    param_names=("descending",))

# --- sum of the multiples of k ------------------------------------------------------------------------------


def multiples_impl(xs, k):
    return sum(x for x in xs if x % k == 0)


def multiples_wrong(xs, k):
    return sum(x for x in xs if x % k == 0 and x > 0)  # bug: negative multiples are dropped


SUM_MULTIPLES = Family(
    name="sum_multiples", entry="sum_multiples", signature="sum_multiples(xs: list[int]) -> int",
    describe=lambda p: (f"Return the sum of the elements of xs that are divisible by {p['k']} (0 for an empty "
                        f"list; negative numbers count too). Example: sum_multiples([{p['k']}, 1, "
                        f"{2 * p['k']}, -{p['k']}]) == {2 * p['k']}."),
    sample_params=lambda rng: {"k": rng.choice([2, 3, 5]), "span": rng.choice([10, 30])},
    make_inputs=lambda rng, p, n: _int_lists(rng, p, n, [[[]], [[1]], [[-6, 7, 0]]]),
    solve=lambda p, xs: multiples_impl(xs, p["k"]), impl=multiples_impl, wrong_impl=multiples_wrong,
    param_names=("k",))

# --- counting characters of a kind --------------------------------------------------------------------------

CHAR_KINDS = {"vowels": "aeiouAEIOU", "digits": "0123456789", "spaces": " "}


def count_impl(s, kind):
    chars = {"vowels": "aeiouAEIOU", "digits": "0123456789", "spaces": " "}[kind]
    return sum(c in chars for c in s)


def count_wrong(s, kind):
    # bugs: upper-case vowels and the digit 0 are missed; leading and trailing spaces are stripped first
    chars = {"vowels": "aeiou", "digits": "123456789", "spaces": " "}[kind]
    return sum(c in chars for c in s.strip())


def _strings(rng, params, n):
    alphabet = "abcdeiouAEIOXYZ0123456789  "
    inputs = [[""], ["AEIOU aeiou 123"], [" x0 A0 "]]
    while len(inputs) < n:
        inputs.append(["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 14)))])
    return inputs


COUNT_CHARS = Family(
    name="count_chars", entry="count_chars", signature="count_chars(s: str) -> int",
    describe=lambda p: (f"Return how many characters of the string s are {p['kind']}"
                        + (" (a, e, i, o, u in lower or upper case)" if p["kind"] == "vowels" else "")
                        + f". Example: count_chars('Ab1 e') == "
                        f"{count_impl('Ab1 e', p['kind'])}."),
    sample_params=lambda rng: {"kind": rng.choice(sorted(CHAR_KINDS))}, make_inputs=lambda rng, p, n: _strings(rng, p, n),
    solve=lambda p, s: count_impl(s, p["kind"]), impl=count_impl, wrong_impl=count_wrong, param_names=("kind",))

# --- second largest distinct value --------------------------------------------------------------------------


def second_impl(xs):
    distinct = sorted(set(xs))
    return distinct[-2] if len(distinct) >= 2 else None


def second_wrong(xs):
    ordered = sorted(xs)
    return ordered[-2] if len(ordered) >= 2 else None  # bug: ties count twice


SECOND_LARGEST = Family(
    name="second_largest", entry="second_largest", signature="second_largest(xs: list[int]) -> int | None",
    describe=lambda p: ("Return the second largest distinct value in xs, or None when xs has fewer than two "
                        "distinct values. Example: second_largest([5, 1, 5, 3]) == 3."),
    sample_params=lambda rng: {"span": rng.choice([5, 20, 100])},
    make_inputs=lambda rng, p, n: _int_lists(rng, p, n, [[[]], [[7]], [[2, 2]], [[9, 9, 4]]]),
    solve=lambda p, xs: second_impl(xs), impl=second_impl, wrong_impl=second_wrong)

# --- running totals -----------------------------------------------------------------------------------------


def running_impl(xs, kind):
    out, acc = [], None
    for x in xs:
        acc = x if acc is None else (acc + x if kind == "sum" else max(acc, x))
        out.append(acc)
    return out


def running_wrong(xs, kind):
    out, acc = [], 0  # bugs: the max starts from 0 (wrong for negatives); the sum excludes element i
    for x in xs:
        if kind == "sum":
            out.append(acc)
            acc += x
        else:
            acc = max(acc, x)
            out.append(acc)
    return out


RUNNING = Family(
    name="running", entry="running", signature="running(xs: list[int]) -> list[int]",
    describe=lambda p: (f"Return the running {'sum' if p['kind'] == 'sum' else 'maximum'} of xs: element i is the "
                        f"{'sum' if p['kind'] == 'sum' else 'maximum'} of xs[0], ..., xs[i] (an empty list for an "
                        f"empty xs). Example: running([2, -5, 4]) == {running_impl([2, -5, 4], p['kind'])}."),
    sample_params=lambda rng: {"kind": rng.choice(["sum", "max"]), "span": rng.choice([9, 30])},
    make_inputs=lambda rng, p, n: _int_lists(rng, p, n, [[[]], [[-3, -1, -2]], [[5]]]),
    solve=lambda p, xs: running_impl(xs, p["kind"]), impl=running_impl, wrong_impl=running_wrong,
    param_names=("kind",))

# --- word lengths -------------------------------------------------------------------------------------------


def lengths_impl(s):
    return [len(w) for w in s.split()]


def lengths_wrong(s):
    return [len(w) for w in s.split(" ")]  # bug: repeated spaces give empty words


def _sentences(rng, params, n):
    words = ["a", "to", "cat", "tree", "apple", "banana", "I", "running"]
    inputs = [[""], ["  two   spaces "], ["one"]]
    while len(inputs) < n:
        inputs.append([(" " * rng.randint(1, 2)).join(rng.choice(words) for _ in range(rng.randint(1, 6)))])
    return inputs


WORD_LENGTHS = Family(
    name="word_lengths", entry="word_lengths", signature="word_lengths(s: str) -> list[int]",
    describe=lambda p: ("Return the lengths of the words of s, in order; words are separated by one or more "
                        "spaces. Example: word_lengths('hi  there') == [2, 5]."),
    sample_params=lambda rng: {}, make_inputs=lambda rng, p, n: _sentences(rng, p, n),
    solve=lambda p, s: lengths_impl(s), impl=lengths_impl, wrong_impl=lengths_wrong)

BASICS = (UNIQUE, SUM_MULTIPLES, COUNT_CHARS, SECOND_LARGEST, RUNNING, WORD_LENGTHS)
