"""An HF/PEFT sampler with the VLLMSampler interface, for machines without vLLM (e.g. GPU boxes here).

Logprobs are the processed ones: log_softmax of the logits after temperature / top-k / top-p, renormalised
over the kept tokens, which is what the sampling distribution was (so importance ratios are right).
"""

from __future__ import annotations

from typing import Sequence

import torch

from inference.types import SampledSequence, SamplingParams


class HFSampler:
    def __init__(self, model_path: str, *, dtype: torch.dtype = torch.float32, device: str = "cpu",
                 max_model_len: int = 2048, **_ignored):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.base = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device).eval()
        self.model = self.base
        self.device, self.max_model_len = device, max_model_len
        self.eos_id = self.tokenizer.eos_token_id
        self.version: int | None = None
        self._adapter_paths: dict[int, str] = {}

    def close(self) -> None:
        pass

    def get_tokenizer(self):
        return self.tokenizer

    def load_adapter(self, version: int, path: str) -> None:
        from peft import PeftModel

        if isinstance(self.model, PeftModel):
            self.model = self.model.unload()  # drop the old LoRA layers, keep the (unmerged) base weights
        self.model = PeftModel.from_pretrained(self.base, path).eval()
        self._adapter_paths = {version: path}
        self.version = version

    def _model_for(self, version):
        version = self.version if version == "current" else version
        if version is None:
            return version, self.base
        if version != self.version:
            raise ValueError(f"adapter version {version} is not loaded (loaded: {self.version})")
        return version, self.model

    @staticmethod
    def _processed_logprobs(logits_V: torch.Tensor, params: SamplingParams) -> torch.Tensor:
        logits_V = logits_V.float() / params.temperature
        if params.top_k > 0:
            kth = torch.topk(logits_V, min(params.top_k, logits_V.shape[-1])).values[..., -1:]
            logits_V = logits_V.masked_fill(logits_V < kth, float("-inf"))
        if params.top_p < 1.0:
            sorted_V, order_V = torch.sort(logits_V, descending=True)
            cum_V = torch.softmax(sorted_V, -1).cumsum(-1)
            drop_sorted = cum_V - torch.softmax(sorted_V, -1) >= params.top_p  # keep the smallest nucleus
            drop_V = torch.zeros_like(drop_sorted).scatter(-1, order_V, drop_sorted)
            logits_V = logits_V.masked_fill(drop_V, float("-inf"))
        return torch.log_softmax(logits_V, -1)

    @torch.no_grad()
    def sample(self, prompts_P: Sequence[Sequence[int]], num_samples: int, params: SamplingParams,
               seeds_P: Sequence[int | None] | None = None, version="current") -> list[list[SampledSequence]]:
        params.check(prompts_P, self.max_model_len)
        version, model = self._model_for(version)
        seeds_P = list(seeds_P) if seeds_P is not None else [params.seed] * len(prompts_P)
        stop_ids = set(params.stop_token_ids) or {self.eos_id}
        results = []
        for prompt, seed in zip(prompts_P, seeds_P):
            gen = torch.Generator(device=self.device)
            if seed is not None:
                gen.manual_seed(seed)
            else:
                gen.seed()  # unseeded request: random, without reseeding torch's global generator
            ids = torch.tensor([list(prompt)] * num_samples, device=self.device)
            out = model(input_ids=ids, use_cache=True)
            past, logits = out.past_key_values, out.logits[:, -1]
            tokens = [[] for _ in range(num_samples)]
            logprobs = [[] for _ in range(num_samples)]
            done = [False] * num_samples
            for _ in range(params.max_tokens):
                logp_BV = self._processed_logprobs(logits, params)
                next_B = torch.multinomial(logp_BV.exp(), 1, generator=gen)[:, 0]
                for b in range(num_samples):
                    if not done[b]:
                        t = int(next_B[b])
                        tokens[b].append(t)
                        logprobs[b].append(float(logp_BV[b, t]))
                        done[b] = t in stop_ids
                if all(done):
                    break
                out = model(input_ids=next_B[:, None], past_key_values=past, use_cache=True)
                past, logits = out.past_key_values, out.logits[:, -1]
            results.append([SampledSequence(tokens=t, logprobs=lp, adapter_version=version,
                                            stop_reason="stop" if d else "length",
                                            text=self.tokenizer.decode(t, skip_special_tokens=True))
                            for t, lp, d in zip(tokens, logprobs, done)])
        return results

    @torch.no_grad()
    def compute_logprobs(self, tokens_T: Sequence[int], version="current") -> list[float | None]:
        _, model = self._model_for(version)
        ids = torch.tensor([list(tokens_T)], device=self.device)
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        picked = logp.gather(-1, ids[0, 1:, None])[:, 0]
        return [None] + [float(x) for x in picked]
