"""Many learner ranks under `accelerate launch`: rank 0 runs the loop (sampling, verification, the client
API) and every learner call it makes is first broadcast to the other ranks, which replay it on their own
LoRALearner, so all ranks enter DeepSpeed's collectives in the same order and train on the same batch.

    rank 0:  BroadcastLearner(...)  -> ("create", args) ; ("call", "forward_backward", args) ; ... ; ("stop",)
    rank k:  follow()               -> replays each message, then reports its weights' hash at "stop"

Messages travel on a gloo group (CPU or GPU alike). Nothing here knows about envs or inference.
"""

from __future__ import annotations

import os
from typing import Any

import torch.distributed as dist

# Learner methods that take part in collectives (or change state) and so must run on every rank.
REPLAYED = {"forward", "forward_backward", "forward_backward_custom", "optim_step", "save_adapter",
            "save_weights_for_sampler", "save_state", "load_state", "base_logprobs"}
_GROUP = None


def launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init() -> None:
    """The process group before any learner exists (DeepSpeed reuses it) and a gloo group for messages."""
    global _GROUP
    if _GROUP is not None:
        return
    if not dist.is_initialized():
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    _GROUP = dist.new_group(backend="gloo")


def _send(message: tuple) -> None:
    dist.broadcast_object_list([message], src=0, group=_GROUP)


def _receive() -> tuple:
    box: list[Any] = [None]
    dist.broadcast_object_list(box, src=0, group=_GROUP)
    return box[0]


class BroadcastLearner:
    """Rank 0's learner: the same object as LoRALearner, but replayed calls are broadcast first."""

    def __init__(self, *args, **kwargs):
        from trainer.learner import LoRALearner

        _send(("create", args, kwargs))
        self._inner = LoRALearner(*args, **kwargs)

    def __getattr__(self, name: str):
        attr = getattr(self._inner, name)
        if name not in REPLAYED:
            return attr

        def replayed(*args, **kwargs):
            _send(("call", name, args, kwargs))
            return attr(*args, **kwargs)
        return replayed


def stop(learners: list) -> list[str]:
    """Rank 0: end the followers; -> every rank's weights hash (rank 0 first) for each learner created."""
    from trainer.ds_check import weights_hash

    _send(("stop",))
    ours = [weights_hash(learner._inner) for learner in learners]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, ours, group=_GROUP)
    return gathered


def follow() -> None:
    """Ranks > 0: replay rank 0's learner calls until it stops."""
    from trainer.ds_check import weights_hash
    from trainer.learner import LoRALearner

    learners: list = []
    while True:
        message = _receive()
        if message[0] == "create":
            learners.append(LoRALearner(*message[1], **message[2]))
        elif message[0] == "call":
            getattr(learners[-1], message[1])(*message[2], **message[3])
        else:
            hashes = [weights_hash(learner) for learner in learners]
            dist.all_gather_object([None] * dist.get_world_size(), hashes, group=_GROUP)
            return
