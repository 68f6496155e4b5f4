"""Verification on Ray CPU workers (or in-process for tiny runs), results in submission order."""

from __future__ import annotations

import os
import tempfile
import time
from typing import Sequence

from envs.base import Env, State, VerifyResult, failed


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Start a local Ray (or join `address`) once, without auth tokens or a dashboard."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Ray's socket paths must stay short; a per-user dir under /tmp keeps them so.
    os.environ.setdefault("RAY_TMPDIR", os.path.join(tempfile.gettempdir(), f"ray_{os.getuid()}"))
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


class VerifierPool:
    """Evaluate completions against an Env. backend='ray' spreads them over Ray workers."""

    def __init__(self, env: Env, backend: str = "ray", address: str | None = None,
                 num_cpus: int | None = None, cpus_per_eval: float = 1.0):
        if backend not in ("ray", "local"):
            raise ValueError(f"unknown verifier backend {backend!r}: use 'ray' or 'local'")
        self.env, self.backend = env, backend
        if backend == "ray":
            import ray

            init_ray(address, num_cpus)
            self._env_ref = ray.put(env)
            self._remote = ray.remote(num_cpus=cpus_per_eval, max_retries=1)(_evaluate_one)

    def evaluate(self, completions: Sequence[str], states: Sequence[State]) -> list[VerifyResult]:
        if len(completions) != len(states):
            raise ValueError(f"{len(completions)} completions but {len(states)} states")
        if self.backend == "local":
            return [_evaluate_one(self.env, c, s) for c, s in zip(completions, states)]
        import ray

        refs = [self._remote.remote(self._env_ref, c, s) for c, s in zip(completions, states)]
        return ray.get(refs)

    def close(self) -> None:
        pass
