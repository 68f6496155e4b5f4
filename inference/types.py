"""The sampler interface's values, shared by every backend (vLLM in-process, vLLM servers, HF/PEFT)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    stop: list[str] | list[int] | None = None
    seed: int | None = None

    def check(self, prompts_P: Sequence[Sequence[int]] = (), max_model_len: int | None = None) -> None:
        """One clear ValueError for bad parameters, or a prompt that leaves no room for max_tokens."""
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (greedy is not supported for RL), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        for p, prompt in enumerate(prompts_P):
            if max_model_len and len(prompt) + self.max_tokens > max_model_len:
                raise ValueError(f"prompt {p} has {len(prompt)} tokens; with max_tokens {self.max_tokens} "
                                 f"it exceeds max_model_len {max_model_len}: shorten it or raise max_model_len")

    @property
    def stop_strings(self) -> list[str]:
        return [s for s in (self.stop or []) if isinstance(s, str)]

    @property
    def stop_token_ids(self) -> list[int]:
        return [s for s in (self.stop or []) if isinstance(s, int)]


@dataclass
class SampledSequence:
    """One completion: its tokens, the (processed) logprob of each, why it stopped, and who made it."""

    tokens: list[int]
    logprobs: list[float]
    stop_reason: str  # "stop" | "length"
    adapter_version: int | None  # None = the base model
    text: str = ""
    mask: list[int] | None = None  # 1 = sampled, 0 = forced (e.g. a two-phase prefill); None = all sampled
    extra: dict = field(default_factory=dict)
