"""One way to get a Tinker-shaped ServiceClient whatever runs behind it:

  backend="local":  LocalServiceClient on an in-process Engine (our learner + a local sampler);
  backend="tinker": the official SDK's tinker.ServiceClient against `base_url` (Tinker's cloud when None,
                    or a `ttt serve` server).
Both expose create_lora_training_client / create_sampling_client / ... with tinker.types values.
"""

from __future__ import annotations

import tempfile
from typing import Any

DEFAULT_CLOUD_URL = None  # None lets the SDK use TINKER_BASE_URL or its built-in cloud URL


def make_engine(model: str = "tiny", *, sampler: Any = None, sampler_kind: str = "vllm",
                checkpoint_dir: str | None = None, max_lora_rank: int = 8, sampler_kwargs: dict | None = None,
                learner_kwargs: dict | None = None, learner_factory=None):
    """An Engine for `model` (a name `resolve_model` knows, or a local dir). `sampler`: an existing sampler to
    share (e.g. one vLLM engine for several clients); otherwise one of kind `sampler_kind` is started."""
    from inference.models import resolve_model
    from inference.samplers import make_sampler
    from shim.engine import Engine

    model_path = resolve_model(model)
    if sampler is None:
        kwargs = dict(sampler_kwargs or {})
        if sampler_kind == "vllm":
            kwargs.setdefault("max_lora_rank", max_lora_rank)
        sampler = make_sampler(sampler_kind, model_path, **kwargs)
    serves_unembed = type(sampler).__name__ == "HFSampler"  # vLLM cannot serve an lm_head LoRA
    root = checkpoint_dir or tempfile.mkdtemp(prefix="ttt-shim-ckpt-")
    return Engine(model_path, sampler, root, served_name=model, max_lora_rank=max_lora_rank,
                  sampler_serves_unembed=serves_unembed, learner_kwargs=learner_kwargs,
                  learner_factory=learner_factory)


def make_service_client(backend: str = "local", *, base_url: str | None = DEFAULT_CLOUD_URL,
                        api_key: str | None = None, engine: Any = None, user_metadata: dict | None = None,
                        **engine_kwargs):
    """backend "local": engine_kwargs go to make_engine (model, sampler, sampler_kind, checkpoint_dir, ...),
    or pass a ready `engine`. backend "tinker": base_url / api_key go to tinker.ServiceClient."""
    if backend == "local":
        from shim.local_client import LocalServiceClient

        return LocalServiceClient(engine if engine is not None else make_engine(**engine_kwargs), user_metadata)
    if backend == "tinker":
        if engine is not None or engine_kwargs:
            raise ValueError(f"backend 'tinker' takes base_url and api_key only, not {sorted(engine_kwargs)}")
        import tinker

        return tinker.ServiceClient(user_metadata=user_metadata, base_url=base_url, api_key=api_key)
    raise ValueError(f"unknown backend {backend!r}: use 'local' or 'tinker'")
