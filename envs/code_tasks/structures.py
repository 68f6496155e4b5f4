"""Families: interval merging, N-queens counting, counting islands in a grid."""

from __future__ import annotations

from envs.code_tasks.family import Family

# --- interval merging ---------------------------------------------------------------------------------------


def merge_impl(intervals):
    merged = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:  # touching intervals merge too
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


def merge_wrong(intervals):
    merged = []
    for start, end in intervals:  # bug: assumes the input is sorted
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


def _interval_inputs(rng, params, n):
    inputs = [[[]], [[[5, 6], [1, 3], [2, 4]]], [[[1, 2], [2, 3]]]]  # empty, unsorted, touching
    while len(inputs) < n:
        intervals = []
        for _ in range(rng.randint(1, 9)):
            s = rng.randint(0, params["span"])
            intervals.append([s, s + rng.randint(0, 6)])
        inputs.append([intervals])
    return inputs


INTERVALS = Family(
    name="intervals", entry="merge_intervals", signature="merge_intervals(intervals: list[list[int]]) -> list[list[int]]",
    describe=lambda p: ("Merge overlapping closed intervals [start, end] (start <= end; intervals that touch, "
                        "like [1, 2] and [2, 3], also merge) and return the merged intervals sorted by start, "
                        "as lists. Example: merge_intervals([[8, 9], [1, 3], [2, 5]]) == [[1, 5], [8, 9]]."),
    sample_params=lambda rng: {"span": rng.choice([10, 30, 100])}, make_inputs=_interval_inputs,
    solve=lambda p, intervals: merge_impl([list(x) for x in intervals]), impl=merge_impl, wrong_impl=merge_wrong)

# --- N-queens -----------------------------------------------------------------------------------------------


def queens_impl(n):
    def place(row, cols, diag1, diag2):
        if row == n:
            return 1
        total = 0
        for c in range(n):
            if c not in cols and row - c not in diag1 and row + c not in diag2:
                total += place(row + 1, cols | {c}, diag1 | {row - c}, diag2 | {row + c})
        return total

    return place(0, frozenset(), frozenset(), frozenset())


def queens_wrong(n):
    def place(row, cols, diag1):  # bug: anti-diagonals are never checked
        if row == n:
            return 1
        return sum(place(row + 1, cols | {c}, diag1 | {row - c})
                   for c in range(n) if c not in cols and row - c not in diag1)

    return place(0, frozenset(), frozenset())


def _queens_inputs(rng, params, n):
    sizes = [1, 2, 3, 4, 5, 6, 7, 8]
    rng.shuffle(sizes)
    picked = [4] + [s for s in sizes if s != 4]
    return [[picked[i % len(picked)]] for i in range(n)]


QUEENS = Family(
    name="n_queens", entry="count_queens", signature="count_queens(n: int) -> int",
    describe=lambda p: ("Return the number of ways to place n queens on an n x n chessboard so that no two "
                        "attack each other (same row, column or diagonal). Example: count_queens(4) == 2."),
    sample_params=lambda rng: {}, make_inputs=_queens_inputs, solve=lambda p, n: queens_impl(n),
    impl=queens_impl, wrong_impl=queens_wrong)

# --- islands ------------------------------------------------------------------------------------------------


def islands_impl(grid, diagonal):
    rows, cols = len(grid), len(grid[0]) if grid else 0
    seen = [[False] * cols for _ in range(rows)]
    steps = [(1, 0), (-1, 0), (0, 1), (0, -1)]
    if diagonal:
        steps += [(1, 1), (1, -1), (-1, 1), (-1, -1)]
    count = 0
    for r in range(rows):
        for c in range(cols):
            if grid[r][c] == 1 and not seen[r][c]:
                count += 1
                seen[r][c] = True
                stack = [(r, c)]
                while stack:
                    y, x = stack.pop()
                    for dy, dx in steps:
                        ny, nx = y + dy, x + dx
                        if 0 <= ny < rows and 0 <= nx < cols and grid[ny][nx] == 1 and not seen[ny][nx]:
                            seen[ny][nx] = True
                            stack.append((ny, nx))
    return count


def islands_wrong(grid, diagonal):
    return islands_impl(grid, not diagonal)  # bug: the other connectivity


def _island_inputs(rng, params, n):
    inputs = [[[[1, 0], [0, 1]]], [[[0, 0, 0]]], [[[1, 1, 0], [0, 1, 0], [1, 0, 1]]]]  # diagonal neighbours
    while len(inputs) < n:
        h, w, p = rng.randint(1, 7), rng.randint(1, 7), rng.choice([0.3, 0.5])
        inputs.append([[[1 if rng.random() < p else 0 for _ in range(w)] for _ in range(h)]])
    return inputs


ISLANDS = Family(
    name="islands", entry="count_islands", signature="count_islands(grid: list[list[int]]) -> int",
    describe=lambda p: ("The grid holds 0 (water) and 1 (land). Count the islands: maximal groups of land cells "
                        "connected " + ("horizontally, vertically or diagonally (8 neighbours)" if p["diagonal"]
                                        else "horizontally or vertically (4 neighbours)") + ". Example: "
                        "count_islands([[1, 0], [0, 1]]) == " + ("1." if p["diagonal"] else "2.")),
    sample_params=lambda rng: {"diagonal": rng.random() < 0.5}, make_inputs=_island_inputs,
    solve=lambda p, grid: islands_impl(grid, p["diagonal"]), impl=islands_impl, wrong_impl=islands_wrong,
    param_names=("diagonal",))
