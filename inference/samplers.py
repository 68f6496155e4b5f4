"""Sampler backends by name; each has load_adapter / sample / compute_logprobs / get_tokenizer / close."""

from __future__ import annotations

from typing import Sequence


def make_sampler(name: str, model_path: str, *, server_urls: Sequence[str] = (), num_servers: int = 1,
                 log_dir: str = ".", **engine_kwargs):
    """vllm: in-process engine; server: vLLM OpenAI servers (given urls, or `num_servers` we start);
    hf: HF/PEFT, for machines without vLLM."""
    if name == "vllm":
        from inference.vllm_sampler import VLLMSampler

        return VLLMSampler(model_path, **engine_kwargs)
    if name == "server":
        from inference.server_sampler import ServerSampler
        from inference.vllm_server import VLLMServer

        servers = [] if server_urls else [
            VLLMServer(model_path, log_path=f"{log_dir}/vllm_server_{i}.log", **engine_kwargs).start()
            for i in range(num_servers)]
        return ServerSampler(model_path, urls=server_urls, servers=servers,
                             max_model_len=engine_kwargs.get("max_model_len"))
    if name == "hf":
        from inference.hf_sampler import HFSampler

        return HFSampler(model_path, **engine_kwargs)
    raise ValueError(f"unknown sampler {name!r}: use 'vllm', 'server' or 'hf'")
