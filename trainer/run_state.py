"""What a checkpoint of the loop holds, and stopping at a safe point on SIGTERM (Slurm preemption)."""

from __future__ import annotations

import signal
from contextlib import ExitStack

from trainer.checkpoint import Checkpoints


class Preempted(RuntimeError):
    """SIGTERM: the last completed step is checkpointed; rerun with resume=true to continue."""


def preemption_flag(stack: ExitStack) -> dict:
    """SIGTERM (Slurm preemption) sets a flag; the loop checkpoints and stops at the next safe point."""
    flag = {"set": False}
    try:
        previous = signal.signal(signal.SIGTERM, lambda *_: flag.update(set=True))
        stack.callback(signal.signal, signal.SIGTERM, previous)
    except ValueError:  # not the main thread: no signal handling
        pass
    return flag


def raise_if(stop, cfg, checkpoints: Checkpoints, completed: int, state_fn) -> None:
    """Before the step mutates anything: make sure step `completed` is checkpointed, then stop."""
    if not stop["set"]:
        return
    latest = checkpoints.latest()
    if completed >= 0 and (latest is None or latest["step"] < completed):
        checkpoints.write(completed, state_fn())
    raise Preempted(f"SIGTERM: stopped before step {completed + 1} (steps up to {completed} are checkpointed); "
                    "rerun with resume=true")


def loop_state(cfg, step, version, groups, best, curriculum, instances, training, rng_state, out,
               next_plan, kl_reference: str | None = None) -> dict:
    """`next_plan`: async, the next step's batch in flight (resumed with its parents and weights);
    `kl_reference`: the tinker:// path of the KL penalty's reference weights (kl_reference=init_adapter)."""
    state = {"step": step, "version": version, "groups": groups, "best": best, "rng": rng_state,
             "next_batch": next_plan.to_dict() if next_plan is not None else None,
             "curriculum": curriculum.to_dict(), "buffers": [i.buffer.to_dict() for i in instances],
             "base_model": cfg.base_model, "env": cfg.env, "env_name": cfg.env_name,
             "curriculum_overrides": list(cfg.curriculum), "training_state": None, "local_training_dir": None,
             "kl_reference": kl_reference}
    if training is not None:
        path = training.save_state(f"step_{step:06d}").result().path
        state["training_state"] = path
        if cfg.backend == "local":
            from shim.checkpoint_paths import CheckpointStore

            state["local_training_dir"] = str(CheckpointStore(out / "tinker").parse(path).directory)
    return state
