"""An HF/PEFT sampler with the VLLMSampler interface, for machines without vLLM (e.g. GPU boxes here).

All prompts of a call decode together in one left-padded batch. Each row has its own generator, and sample k
of a prompt with seed s draws from seed s + k (vLLM's rule for a request with n > 1), so a seeded group of K is
the same as K single requests with seeds s..s+K-1, and a row's samples do not depend on what else is in the
batch (up to float rounding of the batched matmuls). Identical prompts in one call are encoded once.
Logprobs are the processed ones: log_softmax of the logits after temperature / top-k / top-p, renormalised
over the kept tokens, which is what the sampling distribution was (so importance ratios are right).

Adapters are served merged into a copy of the base weights when the dtype is fp32 (see lora_merge.py), else
through PEFT's LoRA layers on a copy; the base model itself is never modified, so version None is always the
base model (the KL reference, frozen runs).
"""

from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch

from inference.lora_merge import MergedModel, merge_plan
from inference.types import SampledSequence, SamplingParams


class HFSampler:
    def __init__(self, model_path: str, *, dtype: torch.dtype = torch.float32, device: str = "cpu",
                 max_model_len: int = 2048, merge_lora: bool | None = None, **_ignored):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.base = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device).eval()
        self.device, self.max_model_len = device, max_model_len
        self.merge_lora = self.base.dtype == torch.float32 if merge_lora is None else merge_lora
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id
        self.version: int | None = None
        self.policy = None  # the model that serves `version`
        self._merged: MergedModel | None = None
        self._peft = None  # PeftModel over a copy of the base, with one adapter at a time
        self._closed = False

    def close(self) -> None:
        """A call decoding now stops at its next token (raises), so a process can exit without waiting for it."""
        self._closed = True

    def get_tokenizer(self):
        return self.tokenizer

    def load_adapter(self, version: int, path: str) -> None:
        plan = merge_plan(path) if self.merge_lora else None
        if plan is not None:
            if self._merged is None:
                self._merged = MergedModel(self.base)
            self._merged.load(plan)
            self.policy = self._merged.model
        else:
            self.policy = self._load_peft(f"v{version}", path)
        self.version = version

    def _load_peft(self, name: str, path: str):
        from peft import PeftModel

        if self._peft is None:
            self._peft = PeftModel.from_pretrained(copy.deepcopy(self.base), path, adapter_name=name).eval()
            return self._peft
        old = self._peft.active_adapter
        self._peft.load_adapter(path, adapter_name=name)
        self._peft.set_adapter(name)
        self._peft.delete_adapter(old)
        return self._peft.eval()

    @property
    def model(self):
        """The module that serves the current version (the base model before any adapter)."""
        return self._model_for("current")[1]

    def _model_for(self, version):
        version = self.version if version == "current" else version
        if version is None:
            return version, self.base
        if version != self.version:
            raise ValueError(f"adapter version {version} is not loaded (loaded: {self.version})")
        return version, self.policy

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

    def _generators(self, seeds_P: Sequence[int | None], n: int) -> list[torch.Generator]:
        """One generator per row: sample k of a prompt seeded s uses seed s + k (vLLM's child-request rule)."""
        gens = []
        for seed in seeds_P:
            for k in range(n):
                gen = torch.Generator(device=self.device)
                if seed is not None:
                    gen.manual_seed(seed + k)
                else:
                    gen.seed()  # unseeded request: random, without reseeding torch's global generator
                gens.append(gen)
        return gens

    @staticmethod
    def _draw(logp_BV: torch.Tensor, gens: list[torch.Generator]) -> torch.Tensor:
        """Inverse-CDF sampling, row b with generator b (one uniform per row per token; torch.multinomial
        costs ~1 ms per call on CPU, most of a small model's decode step)."""
        cdf_BV = logp_BV.double().exp().cumsum(-1)
        u_B = torch.cat([torch.rand(1, generator=gen, dtype=torch.float64, device=gen.device) for gen in gens])
        picked_B = torch.searchsorted(cdf_BV, (u_B * cdf_BV[:, -1])[:, None], right=True)[:, 0]
        return picked_B.clamp(max=logp_BV.shape[-1] - 1)

    def _stopped_by_string(self, tokens_BT: list[torch.Tensor], b: int, stops: list[str]) -> str | None:
        """The text up to the first stop string, if one has appeared (vLLM's default: stop string excluded).

        Called after every token, so only the tail that can hold a stop string just completed is decoded (a
        character takes at most 4 byte-level tokens; 4 more keep the match clear of the window's first token,
        whose decoding can depend on what precedes it); the whole row is decoded once, when one is found."""
        window = 4 * max(len(s) for s in stops) + 4
        tail = self.tokenizer.decode([int(x[b]) for x in tokens_BT[-window:]], skip_special_tokens=True)
        if not any(s in tail for s in stops):
            return None
        text = self.tokenizer.decode([int(x[b]) for x in tokens_BT], skip_special_tokens=True)
        cuts = [i for i in (text.find(s) for s in stops) if i >= 0]
        return text[:min(cuts)] if cuts else None

    @torch.no_grad()
    def sample(self, prompts_P: Sequence[Sequence[int]], num_samples: int, params: SamplingParams,
               seeds_P: Sequence[int | None] | None = None, version="current",
               on_result: Callable[[int, list[SampledSequence]], None] | None = None) -> list[list[SampledSequence]]:
        """`on_result(p, sequences)` is called the moment prompt p's samples have all ended, before the rest of
        the batch (its rows keep decoding): a caller can verify an answer while longer ones still decode."""
        params.check(prompts_P, self.max_model_len)
        version, model = self._model_for(version)
        P, n = len(prompts_P), num_samples
        gens = self._generators(list(seeds_P) if seeds_P is not None else [params.seed] * P, n)
        stop_ids = torch.tensor(sorted(set(params.stop_token_ids) or {self.eos_id}), device=self.device)
        stop_strs = params.stop_strings

        # prefill: one left-padded row per distinct prompt; positions count real tokens only. Its KV cache and
        # last logits are then copied to each of the prompt's rows, so a prompt is encoded once, not n times
        # (nor once per request when a client sends a group as K single requests).
        distinct: dict[tuple[int, ...], int] = {}
        row_of_P = [distinct.setdefault(tuple(p), len(distinct)) for p in prompts_P]
        width = max(len(p) for p in distinct)
        ids_UL = torch.full((len(distinct), width), self.pad_id, dtype=torch.long, device=self.device)
        mask_UL = torch.zeros((len(distinct), width), dtype=torch.long, device=self.device)
        for u, prompt in enumerate(distinct):
            ids_UL[u, width - len(prompt):] = torch.tensor(list(prompt), device=self.device)
            mask_UL[u, width - len(prompt):] = 1
        positions_UL = (mask_UL.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids_UL, attention_mask=mask_UL, position_ids=positions_UL, use_cache=True)
        rows_B = torch.tensor([u for u in row_of_P for _ in range(n)], device=self.device)
        past = out.past_key_values
        past.reorder_cache(rows_B)
        logits_BV = out.logits[:, -1][rows_B]
        mask_BL = mask_UL[rows_B]
        position_B1 = positions_UL[:, -1:][rows_B]

        tokens_BT, logprobs_BT = [], []
        done_B = torch.zeros(P * n, dtype=torch.bool, device=self.device)
        length_B = torch.full((P * n,), params.max_tokens, dtype=torch.long, device=self.device)
        texts: dict[int, str] = {}  # row -> text cut at a stop string
        reported: dict[int, list[SampledSequence]] = {}  # prompts already handed to on_result
        for t in range(params.max_tokens):
            if self._closed:
                raise RuntimeError("the HF sampler was closed while sampling")
            logp_BV = self._processed_logprobs(logits_BV, params)
            next_B = self._draw(logp_BV, gens)
            next_B = torch.where(done_B, self.pad_id, next_B)
            tokens_BT.append(next_B)
            logprobs_BT.append(logp_BV.gather(-1, next_B[:, None])[:, 0])
            finished_B = ~done_B & torch.isin(next_B, stop_ids)
            if stop_strs:
                for b in (~done_B & ~finished_B).nonzero()[:, 0].tolist():
                    cut = self._stopped_by_string(tokens_BT, b, stop_strs)
                    if cut is not None:
                        texts[b] = cut
                        finished_B[b] = True
            length_B = torch.where(finished_B, t + 1, length_B)
            done_B |= finished_B
            if bool(done_B.all()) or t + 1 == params.max_tokens:
                break
            if on_result is not None and bool(finished_B.any()):
                for p in self._newly_done(done_B, finished_B, n):
                    reported[p] = self._group(p, n, tokens_BT, logprobs_BT, done_B, length_B, texts, version)
                    on_result(p, reported[p])
            mask_BL = torch.cat([mask_BL, torch.ones_like(mask_BL[:, :1])], dim=1)
            position_B1 = position_B1 + 1
            out = model(input_ids=next_B[:, None], attention_mask=mask_BL, position_ids=position_B1,
                        past_key_values=past, use_cache=True)
            past, logits_BV = out.past_key_values, out.logits[:, -1]

        results = []
        for p in range(P):  # a reported prompt's rows stopped growing when it was reported
            if p in reported:
                results.append(reported[p])
                continue
            results.append(self._group(p, n, tokens_BT, logprobs_BT, done_B, length_B, texts, version))
            if on_result is not None:
                on_result(p, results[p])
        return results

    @staticmethod
    def _newly_done(done_B: torch.Tensor, finished_B: torch.Tensor, n: int) -> list[int]:
        """Prompts whose last running row ended at this token."""
        done_PN, finished_PN = done_B.view(-1, n), finished_B.view(-1, n)
        return (done_PN.all(-1) & finished_PN.any(-1)).nonzero()[:, 0].tolist()

    def _group(self, p: int, n: int, tokens_BT: list, logprobs_BT: list, done_B, length_B, texts: dict,
               version) -> list[SampledSequence]:
        rows = slice(p * n, (p + 1) * n)
        tokens = torch.stack([x[rows] for x in tokens_BT], 1).tolist()
        logprobs = torch.stack([x[rows] for x in logprobs_BT], 1).tolist()
        group = []
        for i, (stopped, k) in enumerate(zip(done_B[rows].tolist(), length_B[rows].tolist())):
            group.append(SampledSequence(
                tokens=tokens[i][:k], logprobs=logprobs[i][:k], adapter_version=version,
                stop_reason="stop" if stopped else "length",
                text=texts.get(p * n + i, self.tokenizer.decode(tokens[i][:k], skip_special_tokens=True))))
        return group

    @torch.no_grad()
    def compute_logprobs(self, tokens_T: Sequence[int], version="current") -> list[float | None]:
        _, model = self._model_for(version)
        ids = torch.tensor([list(tokens_T)], device=self.device)
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        picked = logp.gather(-1, ids[0, 1:, None])[:, 0]
        return [None] + [float(x) for x in picked]
