"""One inference engine shared by every sampling session: it serves one adapter at a time, so each request
first makes its session's weights the loaded adapter (a fresh version number per load, because the samplers
retire older versions and vLLM caches adapters by id). Requests are serialised by one lock.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Sequence

from inference.types import SampledSequence, SamplingParams


@dataclass
class SamplingTarget:
    """What a sampling session samples from: the base model (adapter_dir None) or a PEFT adapter dir.

    `stamp` changes whenever the dir's contents are rewritten (inflight targets, overwritten checkpoints),
    which forces a reload."""
    adapter_dir: str | None
    stamp: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def key(self) -> tuple[str | None, int]:
        return self.adapter_dir, self.stamp


class SamplingPool:
    def __init__(self, sampler):
        self.sampler = sampler
        self.max_model_len = getattr(sampler, "max_model_len", None)
        self._lock = threading.Lock()
        self._loaded_key: tuple[str | None, int] | None = None
        self._version = 0

    def _activate(self, target: SamplingTarget) -> int | None:
        """Load `target`'s adapter unless it is already loaded; the sampler version to sample with."""
        if target.adapter_dir is None:
            return None
        with target.lock:  # the target's dir is not rewritten while it loads
            key = target.key()
            if key != self._loaded_key:
                self._version += 1
                self.sampler.load_adapter(self._version, target.adapter_dir)
                self._loaded_key = key
        return self._version

    def default_max_tokens(self, prompt_len: int) -> int:
        """SamplingParams.max_tokens=None: the rest of the context window."""
        if self.max_model_len is None:
            raise ValueError("sampling_params.max_tokens is required by this sampler")
        return max(1, self.max_model_len - prompt_len)

    def sample(self, target: SamplingTarget, prompt: Sequence[int], num_samples: int, params: SamplingParams,
               prompt_logprobs: bool) -> tuple[list[SampledSequence], list[float | None] | None]:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if not prompt:
            raise ValueError("prompt is empty")
        with self._lock:
            version = self._activate(target)
            seqs = self.sampler.sample([list(prompt)], num_samples, params, [params.seed], version=version)[0]
            lps = self.sampler.compute_logprobs(list(prompt), version=version) if prompt_logprobs else None
        return seqs, lps

    def compute_logprobs(self, target: SamplingTarget, tokens: Sequence[int]) -> list[float | None]:
        with self._lock:
            version = self._activate(target)
            return self.sampler.compute_logprobs(list(tokens), version=version)
