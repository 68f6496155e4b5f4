"""The local Tinker engine: sessions, LoRA training models and sampling sessions over our learner and one
shared sampler. Both the in-process client (shim/local_client.py) and the HTTP server (shim/server/) call it,
so the two give the same numbers for the same calls.

Ordered operations (forward_backward, optim_step, save_*, legacy load_weights) go through the model's
seq_id queue and return concurrent futures; the rest run directly.
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import threading
import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Sequence

from inference.types import SamplingParams
from shim.checkpoint_paths import CheckpointStore
from shim.ordered_queue import SeqOrderedQueue
from shim.sampling_pool import SamplingPool, SamplingTarget
from shim.training_models import LoraRequest, ModelRegistry, TrainingModel

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, model_path: str, sampler, checkpoint_root: str | Path, *, served_name: str | None = None,
                 max_lora_rank: int | None = None, sampler_serves_unembed: bool = True,
                 learner_kwargs: dict | None = None, learner_factory=None, keep_snapshots: int = 4):
        """`sampler`: an inference sampler (load_adapter / sample / compute_logprobs). vLLM cannot serve an
        lm_head LoRA, so with sampler_serves_unembed=False a requested train_unembed is dropped."""
        self.model_path, self.served_name = model_path, served_name or model_path
        self.store = CheckpointStore(checkpoint_root)
        self.pool = SamplingPool(sampler)
        self.max_lora_rank, self.sampler_serves_unembed = max_lora_rank, sampler_serves_unembed
        self._warned_unembed = False
        self.learner_kwargs = dict(learner_kwargs or {})
        self.learner_factory = learner_factory  # None: trainer.learner.LoRALearner
        # A loop saves sampler weights every step; older snapshots of a model are deleted beyond this many.
        self.keep_snapshots = max(1, keep_snapshots)
        self.models = ModelRegistry()
        self._sessions: dict[str, dict] = {}
        self._sampling: dict[str, tuple[str, SamplingTarget]] = {}  # id -> (base model name, target)
        self._retired: set[str] = set()
        self._lock = threading.Lock()
        self._stamps = itertools.count(1)

    # -- sessions ----------------------------------------------------------------------------------
    def create_session(self, user_metadata: dict | None = None) -> str:
        session_id = str(uuid.uuid4())
        with self._lock:
            self._sessions[session_id] = {"user_metadata": dict(user_metadata or {})}
        return session_id

    def has_session(self, session_id: str) -> bool:
        with self._lock:
            return session_id in self._sessions

    def _require_session(self, session_id: str) -> None:
        if not self.has_session(session_id):
            raise KeyError(f"unknown session_id {session_id!r}")

    def finish_session(self, session_id: str) -> None:
        """Forget the session and free its models' learners (their checkpoints stay on disk)."""
        with self._lock:
            self._sessions.pop(session_id, None)
        self.models.remove_session(session_id)

    # -- training models ---------------------------------------------------------------------------
    def check_base_model(self, base_model: str | None) -> str:
        if base_model in (None, self.served_name, self.model_path):
            return base_model or self.served_name
        raise ValueError(f"base_model {base_model!r} is not served here: this server serves {self.served_name!r} "
                         f"({self.model_path})")

    def _lora_spec(self, lora: LoraRequest):
        from trainer.learner import LoraSpec

        if not isinstance(lora.rank, int) or lora.rank < 1:
            raise ValueError(f"LoRA rank must be a positive integer, got {lora.rank!r}")
        if self.max_lora_rank is not None and lora.rank > self.max_lora_rank:
            raise ValueError(f"LoRA rank {lora.rank} exceeds this server's max_lora_rank {self.max_lora_rank}")
        unembed = bool(lora.train_unembed) and self.sampler_serves_unembed
        if lora.train_unembed and not unembed and not self._warned_unembed:
            # The SDK's default is train_unembed=True, so refusing would break every default client; say it.
            log.warning(
                "train_unembed=True requested, but this server's vLLM sampler cannot serve an lm_head LoRA: "
                "training attention/MLP LoRA only (use the HF sampler to train the unembedding)")
            self._warned_unembed = True
        return LoraSpec(rank=lora.rank, seed=int(lora.seed or 0), train_attn=bool(lora.train_attn),
                        train_mlp=bool(lora.train_mlp), train_unembed=unembed)

    def _model_id(self, session_id: str, model_seq_id: int) -> str:
        self._require_session(session_id)
        if isinstance(model_seq_id, bool) or not isinstance(model_seq_id, int) or model_seq_id < 0:
            raise ValueError(f"model_seq_id must be a non-negative integer, got {model_seq_id!r}")
        return f"{session_id}:train:{model_seq_id}"

    def _new_model(self, model_id: str, session_id: str, base_model: str, spec, user_metadata) -> TrainingModel:
        from trainer.learner import LoRALearner

        factory = self.learner_factory or LoRALearner
        learner = factory(self.model_path, spec, model_id=model_id, **self.learner_kwargs)
        model = TrainingModel(model_id, session_id, base_model, learner, SeqOrderedQueue(model_id),
                              dict(user_metadata or {}))
        self.models.add(model)
        return model

    def create_model(self, session_id: str, model_seq_id: int, base_model: str | None, lora: LoraRequest,
                     user_metadata: dict | None = None) -> str:
        """A fresh LoRA model; calling again with the same (session, model_seq_id) returns the same id."""
        model_id = self._model_id(session_id, model_seq_id)
        if self.models.exists(model_id):
            return model_id
        self._new_model(model_id, session_id, self.check_base_model(base_model), self._lora_spec(lora),
                        user_metadata)
        return model_id

    def create_model_from_state(self, session_id: str, model_seq_id: int, path: str, optimizer: bool,
                                base_model: str | None = None) -> str:
        """Create-via-load: a model with the LoRA shape of the saved state, its weights and (optionally) Adam."""
        from trainer.learner import LoraSpec

        model_id = self._model_id(session_id, model_seq_id)
        if self.models.exists(model_id):
            raise ValueError(f"model {model_id} already exists: create-via-load must be its first request")
        ref = self.store.existing(path)
        if ref.kind != "weights":
            raise ValueError(f"{path} holds sampler weights only; load a save_state (…/weights/…) checkpoint")
        meta = json.loads((ref.directory / "state.json").read_text())
        spec = LoraSpec(**meta["lora"])
        model = self._new_model(model_id, session_id, self.check_base_model(base_model), spec, {})
        model.learner.load_state(str(ref.directory), with_optimizer=bool(optimizer))
        return model_id

    def get_info(self, model_id: str) -> dict:
        model = self.models.get(model_id)
        learner = model.learner
        arch = (getattr(learner.model_config, "architectures", None) or [learner.model_config.model_type])[0]
        return {"model_id": model_id, "is_lora": True, "lora_rank": learner.lora.rank,
                "model_name": model.base_model, "type": "get_info",
                "model_data": {"arch": arch, "model_name": model.base_model, "tokenizer_id": self.model_path}}

    def submit(self, model_id: str, seq_id: int, op: Callable[..., Any], *args) -> Future:
        """Queue `op(model, *args)` as request `seq_id` of the model."""
        model = self.models.get(model_id)
        return model.queue.submit(seq_id, lambda: op(model, *args))

    # -- ordered operations: op(model, ...) ----------------------------------------------------------
    @staticmethod
    def op_forward_backward(model: TrainingModel, data: Sequence[Any], loss_fn: str, loss_fn_config: dict | None,
                            forward_only: bool) -> dict:
        return model.learner.forward_backward(data, loss_fn, loss_fn_config, forward_only=forward_only)

    @staticmethod
    def op_optim_step(model: TrainingModel, adam) -> dict:
        return model.learner.optim_step(adam)

    def op_save_state(self, model: TrainingModel, name: str, overwrite: bool = True) -> str:
        ref = self.store.ref(model.model_id, "weights", name)
        self._clear_for_write(ref.directory, overwrite, ref.tinker_path)
        model.learner.save_state(str(ref.directory))
        return ref.tinker_path

    def op_save_for_sampler(self, model: TrainingModel, name: str) -> str:
        ref = self.store.ref(model.model_id, "sampler_weights", name)
        self._clear_for_write(ref.directory, True, ref.tinker_path)
        model.learner.save_weights_for_sampler(str(ref.directory))
        return ref.tinker_path

    def op_save_ephemeral(self, model: TrainingModel, sampling_session_seq_id: int, kind: str = "snapshot") -> str:
        """Weights for a new sampling session `<session>:sample:<n>`, without a tinker:// name."""
        if kind not in ("snapshot", "inflight"):
            raise ValueError(f"kind must be 'snapshot' or 'inflight', got {kind!r}")
        sampling_id = self._sampling_id(model.session_id, sampling_session_seq_id)
        if kind == "inflight":
            if model.inflight is None:
                model.inflight = SamplingTarget(str(self.store.scratch_dir(model.model_id, "inflight")))
            target = model.inflight
        else:
            target = SamplingTarget(str(self.store.scratch_dir(model.model_id, f"ephemeral-{sampling_id.split(':')[-1]}")))
        with target.lock:
            self._clear_for_write(Path(target.adapter_dir), True, "")
            model.learner.save_weights_for_sampler(target.adapter_dir)
            target.stamp = next(self._stamps)
        self._add_sampling(sampling_id, model.base_model, target)
        if kind == "snapshot":
            self._retire_old_snapshots(model, sampling_id, target)
        return sampling_id

    def op_load_weights(self, model: TrainingModel, path: str, optimizer: bool) -> str:
        ref = self.store.existing(path)
        if ref.kind != "weights":
            raise ValueError(f"{path} holds sampler weights only; load a save_state (…/weights/…) checkpoint")
        model.learner.load_state(str(ref.directory), with_optimizer=bool(optimizer))
        return path

    @staticmethod
    def _clear_for_write(directory: Path, overwrite: bool, tinker_path: str) -> None:
        if directory.exists():
            if not overwrite:
                raise ValueError(f"checkpoint {tinker_path} already exists (pass overwrite=True)")
            shutil.rmtree(directory)

    # -- sampling ----------------------------------------------------------------------------------
    def _sampling_id(self, session_id: str, seq: int) -> str:
        self._require_session(session_id)
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise ValueError(f"sampling_session_seq_id must be a non-negative integer, got {seq!r}")
        return f"{session_id}:sample:{seq}"

    def _retire_old_snapshots(self, model: TrainingModel, sampling_id: str, target: SamplingTarget) -> None:
        model.snapshots.append((sampling_id, target.adapter_dir))
        while len(model.snapshots) > self.keep_snapshots:
            old_id, old_dir = model.snapshots.pop(0)
            with self._lock:
                self._sampling.pop(old_id, None)
                self._retired.add(old_id)
            shutil.rmtree(old_dir, ignore_errors=True)

    def _add_sampling(self, sampling_id: str, base_model: str, target: SamplingTarget) -> None:
        with self._lock:
            self._sampling[sampling_id] = (base_model, target)

    def create_sampling_session(self, session_id: str, seq: int, model_path: str | None = None,
                                base_model: str | None = None) -> str:
        sampling_id = self._sampling_id(session_id, seq)
        if model_path:
            ref = self.store.existing(model_path)
            adapter = ref.directory / "adapter" if ref.kind == "weights" else ref.directory
            target = SamplingTarget(str(adapter), stamp=int(adapter.stat().st_mtime_ns))
            base = self.served_name
        else:
            base, target = self.check_base_model(base_model), SamplingTarget(None)
        self._add_sampling(sampling_id, base, target)
        return sampling_id

    def sampling_session(self, sampling_id: str) -> tuple[str, SamplingTarget]:
        with self._lock:
            found = self._sampling.get(sampling_id)
        if found is None and sampling_id in self._retired:
            raise ValueError(f"sampling client {sampling_id} was retired: only the newest {self.keep_snapshots} "
                             "sampler snapshots of a model are kept; use a newer sampling client")
        if found is None:
            raise KeyError(f"unknown sampling_session_id {sampling_id!r}")
        return found

    def sample(self, sampling_id: str, prompt: Sequence[int], num_samples: int, params: dict,
               include_prompt_logprobs: bool = False):
        """-> (list[inference SampledSequence], prompt logprobs or None). `params`: Tinker SamplingParams
        fields (max_tokens None = rest of the context; stop None = EOS)."""
        return self.submit_sample(sampling_id, prompt, num_samples, params, include_prompt_logprobs).result()

    def submit_sample(self, sampling_id: str, prompt: Sequence[int], num_samples: int, params: dict,
                      include_prompt_logprobs: bool = False) -> Future:
        """sample() as a future, with no thread waiting on it (a step's G x K single requests at once); bad
        input fails the future, as it would fail the call."""
        try:
            return self._submit_sample(sampling_id, prompt, num_samples, params, include_prompt_logprobs)
        except Exception as e:  # noqa: BLE001  (handed to the caller through the future)
            failed: Future = Future()
            failed.set_exception(e)
            return failed

    def _submit_sample(self, sampling_id, prompt, num_samples, params, include_prompt_logprobs):
        _, target = self.sampling_session(sampling_id)
        prompt = [int(t) for t in prompt]
        max_tokens = params.get("max_tokens")
        stop = params.get("stop")
        sp = SamplingParams(
            max_tokens=int(max_tokens) if max_tokens is not None else self.pool.default_max_tokens(len(prompt)),
            temperature=float(params.get("temperature", 1.0) if params.get("temperature") is not None else 1.0),
            top_p=float(params.get("top_p") if params.get("top_p") is not None else 1.0),
            top_k=int(params.get("top_k") if params.get("top_k") is not None else -1),
            stop=[stop] if isinstance(stop, str) else (list(stop) if stop else None),
            seed=None if params.get("seed") is None else int(params["seed"]))
        return self.pool.submit(target, prompt, int(num_samples), sp, bool(include_prompt_logprobs))
