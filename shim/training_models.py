"""The training side of the engine: one LoRALearner per model id, each with its own seq_id-ordered queue.

A model's id is `<session_id>:train:<model_seq_id>` (TINKER_API.md section 6: the SDK derives it itself for
create-via-load). Learners are independent, so one client's failing request cannot touch another's model.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from shim.ordered_queue import SeqOrderedQueue
from shim.sampling_pool import SamplingTarget


@dataclass
class LoraRequest:
    """Tinker's LoraConfig as a client sends it (train_unembed defaults to True there)."""
    rank: int = 32
    seed: int | None = None
    train_mlp: bool = True
    train_attn: bool = True
    train_unembed: bool = True


@dataclass
class TrainingModel:
    model_id: str
    session_id: str
    base_model: str  # the name the client asked for
    learner: object  # trainer.learner.LoRALearner
    queue: SeqOrderedQueue
    user_metadata: dict = field(default_factory=dict)
    inflight: SamplingTarget | None = None  # the mutable sampler target of kind="inflight" saves
    snapshots: list = field(default_factory=list)  # (sampling id, dir) of its snapshot saves, oldest first


class ModelRegistry:
    """model_id -> TrainingModel, with a clear error for unknown ids."""

    def __init__(self):
        self._models: dict[str, TrainingModel] = {}
        self._lock = threading.Lock()

    def add(self, model: TrainingModel) -> None:
        with self._lock:
            if model.model_id in self._models:
                raise ValueError(f"model {model.model_id} already exists")
            self._models[model.model_id] = model

    def get(self, model_id: str) -> TrainingModel:
        with self._lock:
            model = self._models.get(model_id)
        if model is None:
            raise KeyError(f"unknown model_id {model_id!r}")
        return model

    def exists(self, model_id: str) -> bool:
        with self._lock:
            return model_id in self._models

    def remove_session(self, session_id: str) -> list[TrainingModel]:
        with self._lock:
            gone = [m for m in self._models.values() if m.session_id == session_id]
            for m in gone:
                del self._models[m.model_id]
        for m in gone:
            m.queue.close()
        return gone

    def all(self) -> list[TrainingModel]:
        with self._lock:
            return list(self._models.values())
