"""In-process vLLM sampler with versioned LoRA hot-swap and processed (post-temperature/top-p) logprobs.

Two ways to serve an adapter (`adapter_mode`):
- "lora": vLLM's LoRA path. Each adapter version gets a fresh lora_int_id (re-using an id would let vLLM serve
  cached old weights); the previous version is removed once the new one is resident.
- "merged": the adapter is merged into the base weights, which vLLM reloads in place (inference/vllm_weights.py);
  the engine decodes at the plain model's speed (on CPU, vLLM's LoRA kernels cost more than a small model).
  One version is resident at a time: asking for another (the base model for the KL reference, say) reloads.
Every sample carries its version.
"""

from __future__ import annotations

from typing import Callable, Sequence

from inference.types import SampledSequence, SamplingParams


class VLLMSampler:
    def __init__(self, model_path: str, *, max_lora_rank: int = 8, dtype: str = "float32",
                 max_model_len: int = 512, seed: int = 0, gpu_memory_utilization: float = 0.1,
                 enforce_eager: bool = True, max_num_seqs: int = 64, adapter_mode: str = "lora", **engine_kwargs):
        from vllm import LLM

        if adapter_mode not in ("lora", "merged"):
            raise ValueError(f"adapter_mode must be 'lora' or 'merged', got {adapter_mode!r}")
        lora = dict(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=1, max_cpu_loras=2) \
            if adapter_mode == "lora" else dict(worker_extension_cls="inference.vllm_weights.MergedWeights")
        self.llm = LLM(model=model_path, dtype=dtype, max_model_len=max_model_len, seed=seed,
                       gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager,
                       max_num_seqs=max_num_seqs, logprobs_mode="processed_logprobs", **lora, **engine_kwargs)
        self.max_model_len, self.adapter_mode = max_model_len, adapter_mode
        self._adapters: dict[int, object] = {}  # version -> LoRARequest ("lora") or adapter dir ("merged")
        self._next_lora_id = 1  # never reused: vLLM caches adapters by id
        self._resident: int | None = None  # "merged": the version whose weights the engine holds
        self.version: int | None = None  # None = base model

    def close(self) -> None:
        """Stop the engine's processes now rather than at interpreter exit."""
        engine = getattr(self.llm, "llm_engine", None)
        shutdown = getattr(engine, "shutdown", None) or getattr(getattr(engine, "engine_core", None), "shutdown", None)
        if shutdown is not None:
            shutdown()

    def get_tokenizer(self):
        return self.llm.get_tokenizer()

    def load_adapter(self, version: int, path: str) -> None:
        """Make `path` the adapter that samples are drawn from, as `version`; retire older versions."""
        if self.adapter_mode == "merged":
            from inference.lora_merge import merge_plan

            if merge_plan(path) is None:
                raise ValueError(f"adapter {path} is not plain linear LoRA (DoRA, embedding LoRA, saved modules, "
                                 "...): vLLM can serve it only with adapter_mode=lora")
            self._load_merged(path)
            self._adapters = {version: path}
            self._resident = self.version = version
            return
        from vllm.lora.request import LoRARequest

        request = LoRARequest(f"v{version}-{self._next_lora_id}", self._next_lora_id, path)
        self._next_lora_id += 1
        if not self.llm.llm_engine.add_lora(request):
            raise RuntimeError(f"vLLM refused adapter {path} (version {version})")
        for old, old_request in list(self._adapters.items()):
            self.llm.llm_engine.remove_lora(old_request.lora_int_id)
            del self._adapters[old]
        self._adapters[version] = request
        self.version = version

    def _load_merged(self, path: str | None) -> None:
        self.llm.collective_rpc("load_merged", args=(path,))
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights

    def _lora(self, version: int | None):
        if version is not None and version not in self._adapters:
            raise ValueError(f"adapter version {version} is not loaded (loaded: {sorted(self._adapters)})")
        if self.adapter_mode == "merged":
            if version != self._resident:
                self._load_merged(None if version is None else self._adapters[version])
                self._resident = version
            return None
        return None if version is None else self._adapters[version]

    def sample(self, prompts_P: Sequence[Sequence[int]], num_samples: int, params: SamplingParams,
               seeds_P: Sequence[int | None] | None = None, version: int | None | str = "current",
               on_result: Callable[[int, list[SampledSequence]], None] | None = None,
               ) -> list[list[SampledSequence]]:
        """num_samples completions for each prompt, drawn with `version` (default: the newest).
        `on_result(p, sequences)` is called the moment prompt p's samples have all ended, while the engine
        goes on decoding the rest (so a caller can verify an answer while longer ones still decode)."""
        from vllm import SamplingParams as VParams
        from vllm.inputs import TokensPrompt

        params.check(prompts_P, self.max_model_len)
        version = self.version if version == "current" else version
        seeds_P = list(seeds_P) if seeds_P is not None else [params.seed] * len(prompts_P)
        stop_strs, stop_ids = params.stop_strings or None, params.stop_token_ids or None
        vparams = [VParams(n=num_samples, temperature=params.temperature, top_p=params.top_p,
                           top_k=params.top_k if params.top_k > 0 else 0, max_tokens=params.max_tokens,
                           seed=seed, logprobs=0, stop=stop_strs, stop_token_ids=stop_ids)
                   for seed in seeds_P]
        prompts = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts_P]

        def group(out) -> list[SampledSequence]:
            return [SampledSequence(tokens=list(c.token_ids),
                                    logprobs=[lp[t].logprob for lp, t in zip(c.logprobs, c.token_ids)],
                                    stop_reason="length" if c.finish_reason == "length" else "stop",
                                    adapter_version=version, text=c.text) for c in out.outputs]

        # LLM.generate's own loop (enqueue, then step the engine), reporting each request as it finishes. Its
        # outputs carry LLM's request ids, consecutive from its counter: the pool serialises engine calls.
        first = getattr(getattr(self.llm, "request_counter", None), "counter", None)
        if on_result is None or first is None or not hasattr(self.llm, "enqueue"):  # enqueue: vLLM >= 0.1x
            groups = [group(out) for out in self.llm.generate(prompts, vparams, lora_request=self._lora(version),
                                                              use_tqdm=False)]
            for p, seqs in enumerate(groups if on_result is not None else []):
                on_result(p, seqs)
            return groups
        self.llm.enqueue(prompts, vparams, lora_request=self._lora(version), use_tqdm=False)
        groups: list = [None] * len(prompts)
        engine = self.llm.llm_engine
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    p = int(out.request_id) - first
                    groups[p] = group(out)
                    on_result(p, groups[p])
        return groups

    def compute_logprobs(self, tokens_T: Sequence[int], version: int | None | str = "current") -> list[float | None]:
        """log p(token_t | tokens_<t) under `version`; entry 0 is None."""
        from vllm import SamplingParams as VParams
        from vllm.inputs import TokensPrompt

        version = self.version if version == "current" else version
        out = self.llm.generate([TokensPrompt(prompt_token_ids=list(tokens_T))],
                                VParams(max_tokens=1, prompt_logprobs=0, temperature=1.0),
                                lora_request=self._lora(version), use_tqdm=False)[0]
        return [None if d is None else d[t].logprob for d, t in zip(out.prompt_logprobs, tokens_T)]
