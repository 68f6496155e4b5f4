"""Families: 0/1 knapsack, coin change (fewest coins). Both include instances where greedy fails."""

from __future__ import annotations

from envs.code_tasks.family import Family

# --- 0/1 knapsack -------------------------------------------------------------------------------------------


def knapsack_impl(weights, values, capacity):
    best = [0] * (capacity + 1)
    for w, v in zip(weights, values):
        for c in range(capacity, w - 1, -1):
            best[c] = max(best[c], best[c - w] + v)
    return best[capacity]


def knapsack_wrong(weights, values, capacity):
    order = sorted(range(len(weights)), key=lambda i: -values[i] / weights[i])  # bug: greedy by ratio
    total = 0
    for i in order:
        if weights[i] <= capacity:
            capacity -= weights[i]
            total += values[i]
    return total


def _knapsack_inputs(rng, params, n):
    inputs = [[[10, 20, 30], [60, 100, 120], 50], [[5], [10], 4]]  # greedy gives 160 (not 220); nothing fits
    while len(inputs) < n:
        k = rng.randint(1, 12)
        weights = [rng.randint(1, params["max_weight"]) for _ in range(k)]
        values = [rng.randint(1, 60) for _ in range(k)]
        inputs.append([weights, values, rng.randint(0, sum(weights))])
    return inputs


KNAPSACK = Family(
    name="knapsack", entry="knapsack", signature="knapsack(weights: list[int], values: list[int], capacity: int) -> int",
    describe=lambda p: ("0/1 knapsack: each item i has a positive integer weight and value and can be taken at "
                        "most once. Return the largest total value with total weight <= capacity. Example: "
                        "knapsack([1, 3, 4], [15, 20, 30], 4) == 35."),
    sample_params=lambda rng: {"max_weight": rng.choice([5, 10, 20])}, make_inputs=_knapsack_inputs,
    solve=lambda p, w, v, c: knapsack_impl(w, v, c), impl=knapsack_impl, wrong_impl=knapsack_wrong)

# --- coin change --------------------------------------------------------------------------------------------


def coin_impl(coins, amount):
    inf = amount + 1
    best = [0] + [inf] * amount
    for a in range(1, amount + 1):
        for c in coins:
            if c <= a and best[a - c] + 1 < best[a]:
                best[a] = best[a - c] + 1
    return best[amount] if best[amount] <= amount else -1


def coin_wrong(coins, amount):
    count = 0  # bug: greedy, largest coin first
    for c in sorted(coins, reverse=True):
        count += amount // c
        amount %= c
    return count if amount == 0 else -1


def _coin_inputs(rng, params, n):
    inputs = [[[1, 3, 4], 6], [[2], 3], [[5, 7], 0]]  # greedy 3 coins (not 2); impossible; zero amount
    while len(inputs) < n:
        coins = sorted(set(rng.randint(1, params["max_coin"]) for _ in range(rng.randint(1, 4))))
        inputs.append([coins, rng.randint(0, 60)])
    return inputs


COINS = Family(
    name="coin_change", entry="min_coins", signature="min_coins(coins: list[int], amount: int) -> int",
    describe=lambda p: ("Given coin denominations (unlimited supply of each) return the fewest coins summing "
                        "exactly to amount, or -1 if impossible. Example: min_coins([1, 3, 4], 6) == 2."),
    sample_params=lambda rng: {"max_coin": rng.choice([6, 12, 25])}, make_inputs=_coin_inputs,
    solve=lambda p, coins, amount: coin_impl(coins, amount), impl=coin_impl, wrong_impl=coin_wrong)
