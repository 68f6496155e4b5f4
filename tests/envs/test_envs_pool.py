"""The verifier pool: real local Ray (2 CPUs) and the in-process fallback give the same ordered results;
infrastructure failures are retried a bounded number of times; a hung task meets the driver backstop."""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass

import pytest

from envs.base import Env, State, VerifyResult
from envs.circle_packing import CirclePackingEnv
from envs.pool import VerifierPool

ray = pytest.importorskip("ray")


@dataclass
class CrashOnceEnv(Env):
    """Kills its own worker process (as the OOM killer would) the first time it sees each answer."""

    marker_dir: str = ""
    always: bool = False

    def statement(self) -> str:
        return "crash"

    def parse(self, completion):
        return completion

    def verify(self, answer, state):
        marker = os.path.join(self.marker_dir, answer)
        if self.always or not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return VerifyResult(status="ok", reward=1.0, score=1.0, value=1.0)


@dataclass
class HangingEnv(Env):
    def statement(self) -> str:
        return "hang"

    def parse(self, completion):
        return completion

    def verify(self, answer, state):
        time.sleep(120)
        return VerifyResult(status="ok", reward=1.0)


@dataclass
class UnisolatedHostEnv(Env):
    """A program task on a worker whose host cannot keep the run's isolation level (as run_sandboxed raises there)."""

    def statement(self) -> str:
        return "isolation"

    def parse(self, completion):
        return completion

    def limits(self):  # what marks a task that runs programs (ProgramEnv)
        from envs.sandbox import Limits

        return Limits()

    def verify(self, answer, state):
        from envs.sandbox.isolation import IsolationError, current_level

        raise IsolationError(current_level(), "no network, ...: install bubblewrap", "minimal")


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    saved = {k: os.environ.get(k) for k in ("RAY_TMPDIR", "RAY_AUTH_MODE")}
    os.environ["RAY_TMPDIR"] = str(tmp_path_factory.mktemp("ray"))[:60]
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import test modules
    yield
    ray.shutdown()
    for key, value in saved.items():
        os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


def cp_batch():
    env = CirclePackingEnv(n=26, timeout_s=5.0, memory_mb=512)  # short for the loop, enough for a busy CI box
    good = f"```python\n{env.baseline_program()}```"
    overlap = "```python\nimport numpy as np\ndef run_packing():\n    return np.full((26, 2), 0.5), np.full(26, 0.1), 2.6\n```"
    loop = "```python\ndef run_packing():\n    while True:\n        pass\n```"
    completions = [good, "no code block", overlap, loop, good]
    return env, completions, [State()] * len(completions), ["ok", "format_error", "invalid", "timeout", "ok"]


def test_local_backend_keeps_order_and_statuses():
    env, completions, states, want = cp_batch()
    results = VerifierPool(env, backend="local", num_cpus=2).evaluate(completions, states)
    assert [r.status for r in results] == want
    assert results[0].score == pytest.approx(26 * 0.5 / 6)  # 6x6 grid of equal circles, 26 of them
    assert all(r.reward == 0.0 for r, w in zip(results, want) if w != "ok")


def test_ray_pool_matches_the_local_backend(local_ray):
    env, completions, states, want = cp_batch()
    pool = VerifierPool(env, backend="ray", num_cpus=2, cpus_per_eval=1.0)
    assert pool.slots == 2
    t0 = time.monotonic()
    results = pool.evaluate(completions, states)
    assert [r.status for r in results] == want
    assert results[0].score == pytest.approx(26 * 0.5 / 6) and results[4].score == results[0].score
    assert all(r.extra["attempts"] == 1 for r in results)
    assert time.monotonic() - t0 < 60
    pool.close()


def test_ray_pool_retries_infrastructure_failures_boundedly(local_ray, tmp_path):
    results = VerifierPool(CrashOnceEnv(marker_dir=str(tmp_path)), backend="ray", num_cpus=2,
                           max_infra_retries=2).evaluate(["a", "b"], [State(), State()])
    assert [r.status for r in results] == ["ok", "ok"] and [r.extra["attempts"] for r in results] == [2, 2]
    always = VerifierPool(CrashOnceEnv(marker_dir=str(tmp_path), always=True), backend="ray", num_cpus=2,
                          max_infra_retries=1).evaluate(["c"], [State()])
    assert always[0].status == "runtime_error" and "infrastructure failure after 2 attempts" in always[0].message


def test_ray_pool_backstop_force_cancels_a_hung_task(local_ray):
    t0 = time.monotonic()
    results = VerifierPool(HangingEnv(), backend="ray", num_cpus=2, backstop_s=2.0).evaluate(["x"], [State()])
    assert results[0].status == "timeout" and "backstop" in results[0].message
    assert time.monotonic() - t0 < 30


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_a_worker_that_cannot_keep_the_isolation_level_stops_the_caller(backend, local_ray):
    """Not a failed answer (reward 0 for every program, the run going on): the caller gets the one-line error,
    with the level the pool asked for, from wherever the evaluation ran."""
    from envs.sandbox.isolation import IsolationError

    pool = VerifierPool(UnisolatedHostEnv(), backend=backend, num_cpus=2, isolation="namespaces")
    with pytest.raises(IsolationError, match="^sandbox_isolation=namespaces cannot be kept on this host") as caught:
        pool.evaluate(["a", "b"], [State(), State()])
    assert "install bubblewrap" in str(caught.value) and "\n" not in str(caught.value)
    pool.close()


def test_pool_rejects_bad_arguments():
    env = CirclePackingEnv()
    with pytest.raises(ValueError, match="backend"):
        VerifierPool(env, backend="threads")
    with pytest.raises(ValueError, match="2 completions but 1 states"):
        VerifierPool(env, backend="local").evaluate(["a", "b"], [State()])
    with pytest.raises(ValueError, match="sandbox_isolation must be one of strict, namespaces, minimal"):
        VerifierPool(env, backend="local", isolation="off")


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_on_result_reports_each_evaluation_once_as_it_finishes(backend, local_ray):
    from envs.toy_digits import ToyDigitsEnv

    env = ToyDigitsEnv(length=4, verify_delay_s=0.05)
    completions = ["1234", "x", "5555", "0000", "9"]
    seen = []
    results = VerifierPool(env, backend=backend, num_cpus=2).evaluate(
        completions, [State()] * len(completions), on_result=lambda i, r: seen.append((i, r.status)))
    assert sorted(seen) == sorted(enumerate(r.status for r in results))  # every job once, with its own result
    assert [r.status for r in results] == ["ok", "format_error", "ok", "invalid", "invalid"]


def test_fast_evaluations_share_ray_tasks_and_slow_ones_do_not(local_ray):
    from envs.toy_digits import ToyDigitsEnv

    completions = [str(1000 + i) for i in range(120)] + ["x", "00"]
    states = [State()] * len(completions)
    expected = VerifierPool(ToyDigitsEnv(length=4), backend="local").evaluate(completions, states)
    fast = VerifierPool(ToyDigitsEnv(length=4), backend="ray", num_cpus=2)
    seen = []
    results = fast.evaluate(completions, states, on_result=lambda i, r: seen.append(i))
    assert [(r.status, r.reward) for r in results] == [(r.status, r.reward) for r in expected]
    assert sorted(seen) == list(range(len(completions)))  # each evaluation reported once
    first = fast.tasks_submitted
    assert first < len(completions)  # grouped once the first results showed they take microseconds
    fast.evaluate(completions, states)
    assert fast.tasks_submitted - first <= 2 * fast.slots * 2  # measured: the next batch starts grouped
    slow = VerifierPool(ToyDigitsEnv(length=4, verify_delay_s=0.08), backend="ray", num_cpus=2)
    slow.evaluate(completions[:6], states[:6])
    slow.evaluate(completions[:6], states[:6])
    assert slow.tasks_submitted == 12  # above MIN_TASK_S: one evaluation per task
