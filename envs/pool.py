"""Verification on Ray CPU workers (or in-process threads): `submit` one evaluation at any time (a future),
or `evaluate` a batch (results in submission order). One dispatcher thread serves both, so evaluations
submitted at different times (streamed from the sampler, or the next step's) share the slots, oldest first.

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
A host that cannot keep the pool's sandbox isolation level (checked at construction for a local pool, and by
every evaluation wherever it runs) fails the evaluations' futures with IsolationError: the run stops rather
than run programs less isolated than it asked (envs/sandbox/isolation.py).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Sequence

from envs.base import Env, State, VerifyResult, failed
from envs.sandbox import isolation as sandbox_isolation
from envs.sandbox.isolation import IsolationError


MIN_TASK_S = 0.05  # evaluations faster than this on average are grouped into tasks of about this length
POLL_S = 0.05  # the dispatcher's longest wait for a result, so that new submissions go out promptly


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


def _evaluate_one(env: Env, completion: str, state: State, isolation: str | None) -> VerifyResult:
    t0 = time.perf_counter()
    try:
        with sandbox_isolation.level(isolation or sandbox_isolation.DEFAULT):
            result = env.evaluate(completion, state)
    except IsolationError:  # not this answer's failure: the run must not go on less isolated than it asked
        raise
    except Exception as e:  # a verifier bug must not kill the run; record it
        result = failed("runtime_error", f"verifier raised {type(e).__name__}: {e}")
    result.wall_s = time.perf_counter() - t0
    return result


def _evaluate_batch(env: Env, jobs: list[tuple[int, str, State]],
                    isolation: str | None) -> list[tuple[int, VerifyResult]]:
    """One Ray task: one or more evaluations, each under its own limits, keyed by evaluation id."""
    import ray

    node = ray.get_runtime_context().get_node_id()  # where it ran, for cluster logs
    out = []
    for job_id, completion, state in jobs:
        result = _evaluate_one(env, completion, state, isolation)
        result.extra["ray_node"] = node
        out.append((job_id, result))
    return out


def _infra_errors() -> tuple[type, ...]:
    import ray.exceptions as rex

    names = ("WorkerCrashedError", "OutOfMemoryError", "NodeDiedError", "ObjectLostError", "RaySystemError",
             "LocalRayletDiedError", "ObjectReconstructionFailedError", "OwnerDiedError")
    return tuple(getattr(rex, n) for n in names if hasattr(rex, n))


class VerifierPool:
    """Evaluate completions against an Env. backend='ray' spreads them over Ray workers. `isolation`: the sandbox
    isolation level programs run under (strict unless named; unused by tasks that run no program)."""

    def __init__(self, env: Env, backend: str = "ray", address: str | None = None,
                 num_cpus: int | None = None, cpus_per_eval: float = 1.0, backstop_s: float | None = None,
                 max_infra_retries: int = 2, progress: bool | None = None, progress_min: int = 32,
                 isolation: str = sandbox_isolation.DEFAULT):
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
        runs_programs = getattr(env, "limits", None) is not None
        sandbox_isolation.check_name(isolation)
        self.isolation = isolation if runs_programs else None  # None: no program, no sandbox
        if runs_programs and address is None:
            # programs will run on this host: one that cannot keep the level fails here, in one line, before
            # anything starts; the protections that are off are logged once (Ray workers log to their own files)
            sandbox_isolation.require(isolation)
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
        self._queue: deque[_Job] = deque()  # submitted, not yet in a task; oldest first
        self._pending: dict = {}  # Ray task ref -> [its jobs, time its backstop clock started]
        self._wake = threading.Condition()
        self._callback_lock = threading.Lock()
        self._dispatcher: threading.Thread | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False

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

    def submit(self, completion: str, state: State,
               on_result: Callable[[VerifyResult], None] | None = None) -> Future:
        """Queue one evaluation now; the future holds its VerifyResult. `on_result(result)` runs (in the
        pool's thread) before the future completes, so a caller can log it first. Evaluations submitted at
        different times (a step's groups as they are sampled, the next step's while this one trains) share
        the same slots, oldest first."""
        job = _Job(completion, state, on_result)
        self._enqueue([job])
        return job.future

    def _enqueue(self, jobs: list["_Job"]) -> None:
        if self.backend == "local":
            for job in jobs:
                self._local_executor().submit(self._run_local, job)
            return
        with self._wake:  # all at once: the dispatcher sizes its tasks by what is queued
            self._queue.extend(jobs)
            self._start_dispatcher()
            self._wake.notify()

    def evaluate(self, completions: Sequence[str], states: Sequence[State],
                 on_result: Callable[[int, VerifyResult], None] | None = None) -> list[VerifyResult]:
        """Verify completions[i] against states[i]; results in order. `on_result(i, result)` is called as each
        one finishes (in the pool's thread, one call at a time), so a caller can log every finished
        evaluation before the batch completes."""
        if len(completions) != len(states):
            raise ValueError(f"{len(completions)} completions but {len(states)} states")
        bar = self._bar(len(completions))

        def report(i: int):
            def done(result: VerifyResult) -> None:
                if bar is not None:
                    bar.update(1)
                if on_result is not None:
                    on_result(i, result)
            return done

        try:
            jobs = [_Job(c, s, report(i)) for i, (c, s) in enumerate(zip(completions, states))]
            self._enqueue(jobs)
            return [job.future.result() for job in jobs]
        finally:
            if bar is not None:
                bar.close()

    # ---- local backend: a thread per slot ----
    def _local_executor(self) -> ThreadPoolExecutor:
        with self._wake:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=self.slots, thread_name_prefix="verify")
            return self._executor

    def _run_local(self, job: "_Job") -> None:
        job.attempts = 1
        try:
            result = _evaluate_one(self.env, job.completion, job.state, self.isolation)
        except IsolationError as e:
            job.fail(e)
            return
        with self._callback_lock:  # callbacks one at a time, as with Ray's single dispatcher
            job.finish(result)

    # ---- ray backend: one dispatcher thread keeps up to two tasks per slot in flight ----
    def _start_dispatcher(self) -> None:
        if self._dispatcher is None or not self._dispatcher.is_alive():
            self._dispatcher = threading.Thread(target=self._dispatch, name="verifier-pool", daemon=True)
            self._dispatcher.start()

    def _dispatch(self) -> None:
        try:
            self._dispatch_loop()
        except BaseException as e:  # never leave a caller waiting on a future that will not complete
            with self._wake:
                jobs = list(self._queue) + [j for ids in self._pending.values() for j in ids[0]]
                self._queue.clear()
                self._pending.clear()
            for job in jobs:
                job.finish(failed("runtime_error", f"verifier pool failed: {type(e).__name__}: {e}"))

    def _dispatch_loop(self) -> None:
        import ray
        from ray.exceptions import RayTaskError, TaskCancelledError

        infra = _infra_errors()
        while True:
            with self._wake:
                while not self._queue and not self._pending and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                per_task = self._per_task(len(self._queue))  # sized by what was queued when this round began
                while self._queue and len(self._pending) < 2 * self.slots:  # a spare task per slot
                    jobs = [self._queue.popleft() for _ in range(min(per_task, len(self._queue)))]
                    for job in jobs:
                        job.attempts += 1
                    ref = self._remote.remote(self._env_ref, [(k, j.completion, j.state) for k, j in enumerate(jobs)],
                                              self.isolation)
                    self.tasks_submitted += 1
                    self._pending[ref] = [jobs, None]  # [jobs, time its backstop clock started]
                pending = dict(self._pending)
            now = time.monotonic()
            for k, entry in enumerate(pending.values()):  # the oldest `slots` tasks are the running ones
                if k >= self.slots:
                    break
                entry[1] = entry[1] or now
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
            if not ready:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
            for ref in ready:
                with self._wake:
                    jobs, _ = self._pending.pop(ref)
                try:
                    for k, result in ray.get(ref):
                        self._measured(result)
                        jobs[k].finish(result)
                except TaskCancelledError:
                    for job in jobs:
                        job.finish(failed("timeout", "cancelled by the driver"))
                except infra as e:
                    for job in jobs:
                        if job.attempts <= self.max_infra_retries:
                            with self._wake:
                                self._queue.appendleft(job)  # infrastructure, not the program: try again
                        else:
                            job.finish(failed("runtime_error", f"infrastructure failure after {job.attempts} "
                                                               f"attempts: {type(e).__name__}",
                                              extra={"attempts": job.attempts}))
                except RayTaskError as e:
                    if isinstance(e.cause, IsolationError):  # the worker's host cannot keep the level: stop
                        for job in jobs:
                            job.fail(e.cause)
                        continue
                    for job in jobs:
                        job.finish(failed("runtime_error", f"verification task raised: {str(e)[:300]}"))
                except Exception as e:  # any other Ray error: final for these answers, never fatal for the pool
                    for job in jobs:
                        job.finish(failed("runtime_error", f"Ray error: {type(e).__name__}: {str(e)[:300]}"))
            now = time.monotonic()
            with self._wake:
                overdue = [(ref, jobs) for ref, (jobs, started) in self._pending.items()
                           if started is not None and now - started > self.backstop_s * len(jobs)]
                for ref, _ in overdue:
                    del self._pending[ref]
            for ref, jobs in overdue:
                ray.cancel(ref, force=True)
                for job in jobs:
                    job.finish(failed("timeout", f"no result within the driver backstop of "
                                                 f"{self.backstop_s * len(jobs):g} s; task force-cancelled"))

    def close(self) -> None:
        """Stop the dispatcher; evaluations still queued or running are abandoned (their futures stay open)."""
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        if self._dispatcher is not None and self._dispatcher is not threading.current_thread():
            # it returns within one POLL_S wait; a dispatcher still in ray.wait when the process then calls
            # ray.shutdown() makes Ray's core worker end the process with exit code 1 (a SIGTERM's 143 lost)
            self._dispatcher.join(timeout=10.0)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._env_ref = None


class _Job:
    """One evaluation: its inputs, its future, and how many Ray tasks it took (infrastructure retries)."""

    def __init__(self, completion: str, state: State, on_result: Callable[[VerifyResult], None] | None):
        self.completion, self.state, self.on_result = completion, state, on_result
        self.future: Future = Future()
        self.attempts = 0

    def finish(self, result: VerifyResult) -> None:
        if self.future.done():  # the first result wins; a late duplicate is ignored
            return
        result.extra.setdefault("attempts", self.attempts)
        try:
            if self.on_result is not None:
                self.on_result(result)
        except BaseException as e:  # the caller's callback failed (e.g. disk full): the caller must see it
            self.future.set_exception(e)
            return
        self.future.set_result(result)

    def fail(self, error: BaseException) -> None:
        """No result can be given (the host cannot keep the isolation level): the caller gets `error`."""
        if not self.future.done():
            self.future.set_exception(error)
