"""Serve a PEFT LoRA adapter as plain weights: W' = W + scaling * B @ A, written into a copy of the base model.

Why: the HF sampler decodes token by token, and unmerged LoRA adds four small ops to every targeted linear at
every step; on small models and CPUs that overhead is most of the decode time. Merging is exact up to float
rounding, so it is used only where rounding is far below the LoRA update (fp32); in bf16 a small update can
vanish in W's rounding, and the sampler then keeps PEFT's unmerged layers.

Only plain LoRA on linear layers is merged (PEFT's `lora_A.weight` / `lora_B.weight`, scaling alpha / r or
alpha / sqrt(r) with rsLoRA); anything else (DoRA, per-module ranks, embedding LoRA, modules_to_save, biases)
is reported by `merge_plan` as not mergeable and the caller falls back to PEFT.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file

PREFIX = "base_model.model."


def merge_plan(adapter_dir: str) -> dict | None:
    """{module name: (A, B, scaling)} for a plain linear LoRA adapter, else None (use PEFT instead)."""
    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    if (config.get("peft_type", "LORA") != "LORA" or config.get("use_dora") or config.get("fan_in_fan_out")
            or config.get("rank_pattern") or config.get("alpha_pattern") or config.get("modules_to_save")
            or config.get("lora_bias")):
        return None
    weights = Path(adapter_dir) / "adapter_model.safetensors"
    if not weights.exists():
        return None
    r = config["r"]
    scaling = config["lora_alpha"] / (math.sqrt(r) if config.get("use_rslora") else r)
    tensors = load_file(str(weights))
    plan = {}
    for key, A in tensors.items():
        if key.endswith(".lora_B.weight"):
            continue
        if not (key.startswith(PREFIX) and key.endswith(".lora_A.weight")):
            return None  # embedding LoRA, saved full modules, ...: not plain linear LoRA
        name = key[len(PREFIX):-len(".lora_A.weight")]
        B = tensors.get(f"{PREFIX}{name}.lora_B.weight")
        if B is None:
            return None
        plan[name] = (A, B, scaling)
    return plan


class MergedModel:
    """A copy of `base` whose targeted linear weights are rewritten from base + delta at every load."""

    def __init__(self, base: torch.nn.Module):
        self.base = base
        self.model = copy.deepcopy(base)
        out, inp = self.model.get_output_embeddings(), self.model.get_input_embeddings()
        if out is not None and inp is not None and out.weight is inp.weight:  # a merged lm_head must not move
            out.weight = torch.nn.Parameter(out.weight.detach().clone(), requires_grad=False)
        self._base_modules = dict(base.named_modules())
        self._modules = dict(self.model.named_modules())
        self._touched: set[str] = set()

    @torch.no_grad()
    def load(self, plan: dict) -> None:
        missing = [name for name in plan if not isinstance(self._modules.get(name), torch.nn.Linear)]
        if missing:
            raise ValueError(f"adapter targets {missing[:3]}, which are not linear layers of the base model: "
                             "it was trained for another model")
        for name in self._touched - set(plan):  # the previous adapter touched it, this one does not
            self._modules[name].weight.copy_(self._base_modules[name].weight)
        for name, (A, B, scaling) in plan.items():
            W = self._modules[name].weight
            W.copy_(self._base_modules[name].weight)
            W.addmm_(B.to(W.device, W.dtype), A.to(W.device, W.dtype), alpha=scaling)
        self._touched = set(plan)
