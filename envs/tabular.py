"""Tabular ML (seed: MLE-bench): fit on the training split, predict the test split; reward = the test metric.

Datasets ship inside the scikit-learn wheel (no download). The split is fixed by (test_fraction, split_seed).
The program's `run(X_train, y_train, X_test)` receives only training data and test *features*; the test labels
stay in this process, which validates the returned predictions and computes the metric itself.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from envs.base import State, VerifyResult
from envs.program_env import ProgramEnv
from envs.prompting import PromptSpec
from envs.sandbox import SandboxJob, SandboxOutcome
from envs.sandbox.result_channel import ChannelError, finite_float_array

DATASETS = {  # name -> (sklearn loader, task kind, metric)
    "breast_cancer": ("load_breast_cancer", "classification", "accuracy"),
    "wine": ("load_wine", "classification", "accuracy"),
    "iris": ("load_iris", "classification", "accuracy"),
    "diabetes": ("load_diabetes", "regression", "r2"),
}

BASELINE = '''import numpy as np

def run(X_train, y_train, X_test):
    values, counts = np.unique(y_train, return_counts=True)
    return np.full(len(X_test), values[np.argmax(counts)])  # the majority class
'''


@functools.lru_cache(maxsize=8)
def split_data(dataset: str, test_fraction: float, split_seed: int):
    """(X_train, y_train, X_test, y_test, feature_names) for a fixed split."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    import sklearn.datasets
    from sklearn.model_selection import train_test_split

    loader, kind, _ = DATASETS[dataset]
    bunch = getattr(sklearn.datasets, loader)()
    X, y = np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=test_fraction, random_state=split_seed,
                                              stratify=y if kind == "classification" else None)
    return X_tr, y_tr, X_te, y_te, list(getattr(bunch, "feature_names", []))


def metric_value(metric: str, predictions: np.ndarray, y_true: np.ndarray) -> float:
    if metric == "accuracy":
        return float(np.mean(predictions == y_true))
    if metric == "r2":
        residual = np.sum((y_true - predictions) ** 2)
        total = np.sum((y_true - y_true.mean()) ** 2)
        return float(1.0 - residual / total)
    raise ValueError(f"unknown metric {metric!r}")


@dataclass
class TabularEnv(ProgramEnv):
    name: str = "tabular"
    dataset: str = "breast_cancer"
    test_fraction: float = 0.25
    split_seed: int = 0
    target: float | None = None
    timeout_s: float = 120.0
    cpus_per_eval: int = 2

    entry = "run"
    higher_is_better = True
    default_reward = "linear"

    def __post_init__(self):
        super().__post_init__()
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")

    @property
    def kind(self) -> str:
        return DATASETS[self.dataset][1]

    @property
    def metric(self) -> str:
        return DATASETS[self.dataset][2]

    def prompt_spec(self, state: State) -> PromptSpec:
        X_tr, y_tr, X_te, _, names = split_data(self.dataset, self.test_fraction, self.split_seed)
        classes = f" with classes {sorted(set(y_tr.tolist()))}" if self.kind == "classification" else ""
        statement = (
            f"Tabular {self.kind} on scikit-learn's `{self.dataset}` data: {X_tr.shape[0]} training rows, "
            f"{X_te.shape[0]} test rows, {X_tr.shape[1]} numeric features"
            + (f" ({', '.join(names[:12])}{', ...' if len(names) > 12 else ''})" if names else "")
            + f". Target: {self.kind}{classes}. Write `run(X_train, y_train, X_test)` that trains a model and "
            f"returns one prediction per test row (a 1-D array of length {X_te.shape[0]}"
            + (", class labels" if self.kind == "classification" else "") + "). "
            f"The reward is the {self.metric} on the hidden test labels, computed by the verifier.")
        return PromptSpec(statement=statement, entry_signature="run(X_train, y_train, X_test) -> predictions",
                          objective=f"test {self.metric}", higher_is_better=True, timeout_s=self.timeout_s,
                          cpus=self.cpus_per_eval, target=self.target, libraries=("numpy", "scipy", "scikit-learn"))

    def job(self, program: str, state: State) -> SandboxJob:
        X_tr, y_tr, X_te, _, _ = split_data(self.dataset, self.test_fraction, self.split_seed)
        inputs = {"X_train": X_tr, "y_train": y_tr, "X_test": X_te}
        return SandboxJob(source=program, entry=self.entry, inputs=inputs, input_kwargs=tuple(inputs),
                          split_result=False)

    def score_outcome(self, outcome: SandboxOutcome, state: State) -> VerifyResult:
        _, y_tr, X_te, y_te, _ = split_data(self.dataset, self.test_fraction, self.split_seed)
        try:
            predictions = finite_float_array((outcome.arrays or [None])[0], "predictions", (X_te.shape[0],))
        except ChannelError as e:
            return self.rejected(str(e))
        return self.verify_predictions(predictions, state)

    def verify_predictions(self, predictions: np.ndarray, state: State = State()) -> VerifyResult:
        _, y_tr, X_te, y_te, _ = split_data(self.dataset, self.test_fraction, self.split_seed)
        if self.kind == "classification":
            labels = set(np.unique(y_tr).tolist())
            if not (np.all(predictions == np.rint(predictions)) and set(np.unique(predictions).tolist()) <= labels):
                return self.rejected(f"predictions must be class labels from {sorted(labels)}")
        score = metric_value(self.metric, predictions, y_te.astype(np.float64))
        result = self.accepted(score, None, state, extra={"metric": self.metric, "n_test": int(X_te.shape[0])})
        if self.metric == "r2":  # a fit worse than predicting the mean earns what a failure earns
            result.reward = self.reward.valid(max(score, 0.0), None if state.score is None else max(state.score, 0.0))
        return result

    def baseline_program(self) -> str:
        return BASELINE

    def initial_states(self, rng=None) -> list[State]:
        return [State(code=BASELINE)] if self.initial_state == "none" else [State()]
