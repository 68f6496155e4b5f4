"""A PEFT LoRA learner with Tinker's semantics: forward_backward accumulates summed-loss gradients over
Datum-shaped inputs until optim_step applies one AdamW step; save_adapter writes a PEFT dir vLLM can load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from trainer.losses import LOSS_INPUTS, check_loss, token_loss_sum

ATTN_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP_MODULES = ["gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class LoraSpec:
    rank: int = 8
    alpha: float = 32.0
    seed: int = 0
    train_attn: bool = True
    train_mlp: bool = True
    train_unembed: bool = False

    def target_modules(self) -> list[str]:
        modules = (ATTN_MODULES if self.train_attn else []) + (MLP_MODULES if self.train_mlp else [])
        modules += ["lm_head"] if self.train_unembed else []
        if not modules:
            raise ValueError("LoRA trains nothing: set at least one of train_attn, train_mlp, train_unembed")
        return modules


@dataclass(frozen=True)
class AdamParams:
    learning_rate: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-12
    weight_decay: float = 0.0
    grad_clip_norm: float = 0.0


def _tokens(datum: Any) -> list[int]:
    model_input = datum.model_input
    return list(model_input.to_ints()) if hasattr(model_input, "to_ints") else list(model_input)


def _tensor(value: Any, dtype: torch.dtype) -> torch.Tensor:
    if hasattr(value, "to_torch"):
        value = value.to_torch()
    elif hasattr(value, "data") and not isinstance(value, torch.Tensor):
        value = value.data
    return torch.as_tensor(value, dtype=dtype)


class LoRALearner:
    def __init__(self, model_path: str, lora: LoraSpec = LoraSpec(), dtype: torch.dtype = torch.float32,
                 device: str = "cpu", micro_batch_tokens: int = 8192):
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device)
        torch.manual_seed(lora.seed)
        config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, target_modules=lora.target_modules(),
                            lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
        self.model = get_peft_model(base, config)
        self.model.train()
        self.lora, self.device, self.micro_batch_tokens = lora, device, micro_batch_tokens
        self.vocab_size = base.config.vocab_size
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-4)
        self.steps = 0

    # -- inputs -------------------------------------------------------------------------------------
    def _prepare(self, data: Sequence[Any], loss_fn: str) -> list[tuple[list[int], dict[str, torch.Tensor]]]:
        """Validate every datum; one error naming the datum and the field."""
        needed = ("target_tokens",) + LOSS_INPUTS[loss_fn]
        prepared = []
        for i, datum in enumerate(data):
            tokens = _tokens(datum)
            if not tokens:
                raise ValueError(f"datum {i}: model_input is empty")
            inputs = {}
            for key in needed:
                if key not in datum.loss_fn_inputs:
                    raise ValueError(f"datum {i}: loss_fn_inputs lacks {key!r}, which {loss_fn} needs")
                dtype = torch.long if key == "target_tokens" else torch.float32
                t = _tensor(datum.loss_fn_inputs[key], dtype)
                if t.shape != (len(tokens),):
                    raise ValueError(f"datum {i}: loss_fn_inputs[{key!r}] has shape {tuple(t.shape)}, "
                                     f"expected ({len(tokens)},) like model_input")
                inputs[key] = t
            for key, ids in (("model_input", torch.tensor(tokens)), ("target_tokens", inputs["target_tokens"])):
                if ids.min() < 0 or ids.max() >= self.vocab_size:
                    raise ValueError(f"datum {i}: {key} has token id {int(ids.max())} outside the vocabulary "
                                     f"[0, {self.vocab_size})")
            prepared.append((tokens, inputs))
        return prepared

    def _micro_batches(self, n_tokens: list[int]) -> list[list[int]]:
        """Datum indices grouped so that each padded batch holds at most micro_batch_tokens."""
        batches: list[list[int]] = []
        current: list[int] = []
        for i in sorted(range(len(n_tokens)), key=lambda j: -n_tokens[j]):  # longest first = batch width
            if current and n_tokens[current[0]] * (len(current) + 1) > self.micro_batch_tokens:
                batches.append(current)
                current = []
            current.append(i)
        return batches + ([current] if current else [])

    def _logprobs(self, batch: list[tuple[list[int], dict[str, torch.Tensor]]]) -> list[torch.Tensor]:
        """Per-datum log p(target_t | model_input_<=t), right-padded into one forward pass."""
        width = max(len(tokens) for tokens, _ in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for b, (tokens, _) in enumerate(batch):
            ids[b, : len(tokens)] = torch.tensor(tokens)
            mask[b, : len(tokens)] = 1
        logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits.float()
        out = []
        for b, (tokens, inputs) in enumerate(batch):
            logp = torch.log_softmax(logits[b, : len(tokens)], dim=-1)
            out.append(logp.gather(-1, inputs["target_tokens"].to(self.device)[:, None])[:, 0])
        return out

    # -- Tinker operations --------------------------------------------------------------------------
    def forward_backward(self, data: Sequence[Any], loss_fn: str, loss_fn_config: dict | None = None,
                         forward_only: bool = False) -> dict:
        """Sum-reduced loss over all tokens of all datums; gradients accumulate until optim_step.

        Returns {"loss_fn_outputs": [{"logprobs": tensor}], "metrics": {"loss:sum": float}}.
        """
        config = check_loss(loss_fn, loss_fn_config)
        prepared = self._prepare(data, loss_fn)
        logprobs: list[torch.Tensor | None] = [None] * len(prepared)
        total = 0.0
        for idx in self._micro_batches([len(t) for t, _ in prepared]):
            batch = [prepared[i] for i in idx]
            with torch.set_grad_enabled(not forward_only):
                lps = self._logprobs(batch)
                loss = sum(token_loss_sum(loss_fn, lp, {k: v.to(self.device) for k, v in inp.items()}, config)
                           for lp, (_, inp) in zip(lps, batch))
                if not forward_only:
                    loss.backward()
            total += float(loss.detach())
            for i, lp in zip(idx, lps):
                logprobs[i] = lp.detach().cpu()
        return {"loss_fn_outputs": [{"logprobs": lp} for lp in logprobs], "metrics": {"loss:sum": total}}

    def optim_step(self, adam: AdamParams) -> dict:
        for group in self.optimizer.param_groups:
            group.update(lr=adam.learning_rate, betas=(adam.beta1, adam.beta2), eps=adam.eps,
                         weight_decay=adam.weight_decay)
        metrics = {}
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.params, adam.grad_clip_norm if adam.grad_clip_norm > 0 else float("inf"))
        metrics["grad_norm:mean"] = float(grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        return metrics

    def save_adapter(self, path: str) -> str:
        """A PEFT adapter dir (adapter_config.json + adapter_model.safetensors) for vLLM and HF."""
        self.model.save_pretrained(path)
        return path
