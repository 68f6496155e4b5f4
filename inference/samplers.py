"""Sampler backends by name; each has load_adapter / sample / compute_logprobs / get_tokenizer."""

from __future__ import annotations


def make_sampler(name: str, model_path: str, **kwargs):
    if name == "vllm":
        from inference.vllm_sampler import VLLMSampler

        return VLLMSampler(model_path, **kwargs)
    if name == "hf":
        from inference.hf_sampler import HFSampler

        return HFSampler(model_path, **kwargs)
    raise ValueError(f"unknown sampler {name!r}: use 'vllm' or 'hf'")
