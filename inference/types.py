"""The sampler interface's values, shared by every backend (vLLM in-process, vLLM servers, HF/PEFT)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    stop: list[str] | list[int] | None = None
    seed: int | None = None

    def check(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (greedy is not supported for RL), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


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
