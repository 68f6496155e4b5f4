"""Many learner processes: ranks, collectives, and the DeepSpeed (ZeRO-2/3) wrapping done through accelerate.

Rank 0 is decided by torch.distributed (or RANK before the group exists), never by accelerate's
`is_main_process`: on CPU accelerate reports process_index 0 on every rank because DeepSpeed creates the
process group later (../shared/docs/PLATFORM.md section 6), and two ranks writing one checkpoint race.

Every rank receives the same full list of datums (like one Tinker request) and works on its own shard;
losses are summed and logprobs gathered so every rank returns the same result.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterable

import torch
import torch.distributed as dist


def rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_rank0() -> bool:
    return rank() == 0


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if _active():
        dist.barrier()


def all_reduce_sum(value: float) -> float:
    if not _active():
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)  # gloo and CPU tensors: the group here is gloo on CPU
    return float(t[0])


def all_reduce_max(value: int) -> int:
    if not _active():
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t[0])


def all_gather_objects(obj: Any) -> list[Any]:
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def local_device(device: str) -> str:
    """A bare "cuda" means this process's GPU (LOCAL_RANK, set by accelerate / torchrun); others unchanged."""
    if device == "cuda":
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def launched_with_deepspeed() -> bool:
    """True inside `accelerate launch` with a DeepSpeed config (accelerate exports this to every rank)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def wrap_with_deepspeed(model: torch.nn.Module, optimizer: torch.optim.Optimizer):
    """(engine, zero_optimizer) from the DeepSpeed config that `accelerate launch` passed in the environment.

    The config must set managed_gradient_accumulation false: then every engine.backward() accumulates and
    engine.step() is the only boundary, which is Tinker's forward_backward / optim_step contract.
    """
    from accelerate import Accelerator

    accelerator = Accelerator()
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    if config.get("managed_gradient_accumulation", True):
        raise ValueError("the DeepSpeed config must set \"managed_gradient_accumulation\": false so that "
                         "gradients accumulate across forward_backward calls until optim_step")
    engine, _ = accelerator.prepare(model, optimizer)
    return engine, engine.optimizer


def zero_stage(engine) -> int:
    return int(engine.zero_optimization_stage()) if engine is not None else 0


def gathered(params: Iterable[torch.nn.Parameter], engine,
             modifier_rank: int | None = None) -> contextlib.AbstractContextManager:
    """Full parameter values inside the block; ZeRO-3 partitions parameters, stages 0-2 keep them whole.

    modifier_rank=r: what rank r writes into the parameters in the block is partitioned again on exit."""
    if zero_stage(engine) < 3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(params), modifier_rank=modifier_rank)
