"""Verification on Ray CPU workers (or in-process threads), results in submission order.

Deadlines: each evaluation enforces its own time limit inside the task (the sandbox kills the program's
whole tree); the driver adds a backstop. At most two tasks per CPU slot are in flight, and a task's backstop
clock starts only once it is among the oldest `slots` unfinished tasks, i.e. when it can actually run, not
while it queues (TTT-Discover known bug 4). Past the backstop the task is force-cancelled (its worker dies;
sandboxes die with it via pdeathsig).
Fast verifiers (a parse and a formula) would spend more on Ray's per-task round trip than on verifying, so
evaluations go several to a task once their measured mean time is below MIN_TASK_S (still at least two tasks
per slot per batch); a slow verifier keeps one evaluation per task.
Infrastructure failures (worker crash, OOM kill of the worker, lost node) are resubmitted a bounded number
of times; program failures are final. Results are keyed by evaluation id and the first one wins, so a late
duplicate can never overwrite a result.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

from envs.base import Env, State, VerifyResult, failed


MIN_TASK_S = 0.05  # evaluations faster than this on average are grouped into tasks of about this length


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Start a local Ray (or join `address`) once, without auth tokens or a dashboard."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Ray's socket paths must stay short; a per-user dir under /tmp keeps them so.
    os.environ.setdefault("RAY_TMPDIR", os.path.join(tempfile.gettempdir(), f"ray_{os.getuid()}"))
    # An OOM kill surfaces at once as OutOfMemoryError instead of silent re-runs; the driver retries boundedly.
    os.environ.setdefault("RAY_task_oom_retries", "0")
    kwargs: dict = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), _temp_dir=os.environ["RAY_TMPDIR"], **kwargs)


def _evaluate_one(env: Env, completion: str, state: State) -> VerifyResult:
    t0 = time.perf_counter()
    try:
        result = env.evaluate(completion, state)
    except Exception as e:  # a verifier bug must not kill the run; record it
        result = failed("runtime_error", f"verifier raised {type(e).__name__}: {e}")
    result.wall_s = time.perf_counter() - t0
    return result


def _evaluate_batch(env: Env, jobs: list[tuple[int, str, State]]) -> list[tuple[int, VerifyResult]]:
    """One Ray task: one or more evaluations, each under its own limits, keyed by evaluation id."""
    import ray

    node = ray.get_runtime_context().get_node_id()  # where it ran, for cluster logs
    out = []
    for job_id, completion, state in jobs:
        result = _evaluate_one(env, completion, state)
        result.extra["ray_node"] = node
        out.append((job_id, result))
    return out


def _infra_errors() -> tuple[type, ...]:
    import ray.exceptions as rex

    names = ("WorkerCrashedError", "OutOfMemoryError", "NodeDiedError", "ObjectLostError", "RaySystemError",
             "LocalRayletDiedError", "ObjectReconstructionFailedError", "OwnerDiedError")
    return tuple(getattr(rex, n) for n in names if hasattr(rex, n))


class VerifierPool:
    """Evaluate completions against an Env. backend='ray' spreads them over Ray workers."""

    def __init__(self, env: Env, backend: str = "ray", address: str | None = None,
                 num_cpus: int | None = None, cpus_per_eval: float = 1.0, backstop_s: float | None = None,
                 max_infra_retries: int = 2, progress: bool | None = None, progress_min: int = 32):
        if backend not in ("ray", "local"):
            raise ValueError(f"unknown verifier backend {backend!r}: use 'ray' or 'local'")
        if not cpus_per_eval > 0:
            raise ValueError(f"cpus_per_eval must be > 0, got {cpus_per_eval}")
        self.env, self.backend, self.cpus_per_eval = env, backend, cpus_per_eval
        limit = getattr(env, "timeout_s", None)
        # the task's own limit + sandbox start-up + verification; only a hung task ever reaches it
        self.backstop_s = backstop_s or ((1.25 * limit + 60.0) if limit else 600.0)
        self.max_infra_retries, self.progress, self.progress_min = max_infra_retries, progress, progress_min
        cpus = num_cpus or os.cpu_count() or 1
        if address is None and getattr(env, "limits", None) is not None:
            # programs will run on this host: detect the sandbox now, so a broken one fails here and the
            # protections that are off are logged once in this process (Ray workers log to their own files)
            from envs.sandbox_profile import current_profile

            current_profile()
        if backend == "ray":
            import ray

            init_ray(address, num_cpus)
            cpus = ray.cluster_resources().get("CPU", cpus)
            self._env_ref = ray.put(env)
            # SPREAD: verifications are CPU-bound, so use every node of a cluster rather than packing the first
            self._remote = ray.remote(num_cpus=cpus_per_eval, max_retries=0, retry_exceptions=False,
                                      scheduling_strategy="SPREAD")(_evaluate_batch)
        self.slots = max(1, int(cpus // cpus_per_eval))
        self.mean_eval_s: float | None = None  # running mean of one evaluation's wall time
        self.tasks_submitted = 0  # Ray tasks (an evaluation's retry is a new task)

    def _per_task(self, batch: int) -> int:
        """Evaluations per task: ~MIN_TASK_S of work, and the batch still spread over two tasks per slot."""
        if self.mean_eval_s is None:
            return 1
        fits = int(MIN_TASK_S / max(self.mean_eval_s, 1e-6))
        return max(1, min(fits, -(-batch // (2 * self.slots))))

    def _measured(self, result: VerifyResult) -> None:
        wall = result.wall_s or 0.0
        self.mean_eval_s = wall if self.mean_eval_s is None else 0.8 * self.mean_eval_s + 0.2 * wall

    def _bar(self, n: int):
        show = self.progress if self.progress is not None else n >= self.progress_min
        if not show:
            return None
        from tqdm import tqdm

        return tqdm(total=n, desc=f"verify {getattr(self.env, 'name', 'env')}", leave=False, dynamic_ncols=True)

    def evaluate(self, completions: Sequence[str], states: Sequence[State],
                 on_result: Callable[[int, VerifyResult], None] | None = None) -> list[VerifyResult]:
        """Verify completions[i] against states[i]. `on_result(i, result)` is called as each one finishes (in
        the driver's thread), so a caller can log every finished evaluation before the batch completes."""
        if len(completions) != len(states):
            raise ValueError(f"{len(completions)} completions but {len(states)} states")
        bar = self._bar(len(completions))
        try:
            if self.backend == "local":
                return self._evaluate_local(completions, states, bar, on_result)
            return self._evaluate_ray(completions, states, bar, on_result)
        finally:
            if bar is not None:
                bar.close()

    def _evaluate_local(self, completions, states, bar, on_result) -> list[VerifyResult]:
        lock = threading.Lock()

        def run(job):
            i, (completion, state) = job
            result = _evaluate_one(self.env, completion, state)
            with lock:
                if bar is not None:
                    bar.update(1)
                if on_result is not None:
                    on_result(i, result)
            return result

        jobs = list(enumerate(zip(completions, states)))
        if self.slots == 1 or len(completions) <= 1:
            return [run(job) for job in jobs]
        with ThreadPoolExecutor(max_workers=self.slots, thread_name_prefix="verify") as pool:
            return list(pool.map(run, jobs))

    def _evaluate_ray(self, completions, states, bar, on_result) -> list[VerifyResult]:
        import ray
        from ray.exceptions import RayTaskError, TaskCancelledError

        infra = _infra_errors()
        results: dict[int, VerifyResult] = {}
        attempts = [0] * len(completions)
        queue, pending = deque(range(len(completions))), {}

        def record(i: int, result: VerifyResult) -> None:
            if i not in results:  # first result wins; duplicates are ignored
                results[i] = result
                if bar is not None:
                    bar.update(1)
                if on_result is not None:
                    on_result(i, result)

        while queue or pending:
            while queue and len(pending) < 2 * self.slots:  # a spare task per slot hides scheduling gaps
                ids = []
                while queue and len(ids) < self._per_task(len(completions)):
                    i = queue.popleft()
                    if i not in results:
                        ids.append(i)
                if not ids:
                    continue
                for i in ids:
                    attempts[i] += 1
                ref = self._remote.remote(self._env_ref, [(i, completions[i], states[i]) for i in ids])
                self.tasks_submitted += 1
                pending[ref] = [ids, None]  # [evaluation ids, time its backstop clock started]
            now = time.monotonic()
            for k, entry in enumerate(pending.values()):  # the oldest `slots` tasks are the running ones
                if k >= self.slots:
                    break
                entry[1] = entry[1] or now
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
            if not ready:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                ids, _ = pending.pop(ref)
                try:
                    for job_id, result in ray.get(ref):
                        self._measured(result)
                        record(job_id, result)
                except TaskCancelledError:
                    for i in ids:
                        record(i, failed("timeout", "cancelled by the driver"))
                except infra as e:
                    for i in ids:
                        if attempts[i] <= self.max_infra_retries:
                            queue.append(i)  # infrastructure, not the program: try again
                        else:
                            record(i, failed("runtime_error", f"infrastructure failure after {attempts[i]} "
                                                              f"attempts: {type(e).__name__}",
                                             extra={"attempts": attempts[i]}))
                except RayTaskError as e:
                    for i in ids:
                        record(i, failed("runtime_error", f"verification task raised: {str(e)[:300]}"))
                except Exception as e:  # any other Ray error: final for these answers, never fatal for the batch
                    for i in ids:
                        record(i, failed("runtime_error", f"Ray error: {type(e).__name__}: {str(e)[:300]}"))
            now = time.monotonic()
            for ref, (ids, started) in list(pending.items()):
                if started is not None and now - started > self.backstop_s * len(ids):
                    ray.cancel(ref, force=True)
                    del pending[ref]
                    for i in ids:
                        record(i, failed("timeout", f"no result within the driver backstop of "
                                                    f"{self.backstop_s * len(ids):g} s; task force-cancelled"))
        for i, n in enumerate(attempts):
            results[i].extra.setdefault("attempts", n)
        return [results[i] for i in range(len(completions))]

    def close(self) -> None:
        self._env_ref = None
