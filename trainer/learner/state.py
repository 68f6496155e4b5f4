"""save_state / load_state: LoRA weights, AdamW state and the step count, in one format for one process and for
DeepSpeed ZeRO-1/2/3 ranks (a state saved by either loads into the other).

Layout of a state dir:
  state.json          format, steps, base model, LoRA spec, whether optimizer moments are present
  state.safetensors   per trainable parameter name: param/<name>, exp_avg/<name>, exp_avg_sq/<name>, step/<name>
  adapter/            the same weights as a PEFT adapter, so a state dir also serves a sampler
Weights are stored as fp32 masters and moments as AdamW keeps them, so a reload continues bit-exactly.
Under DeepSpeed every rank takes part in gathering the partitioned state; only rank 0 writes.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from trainer import distributed

FORMAT = "ttt-learner-state/1"
MOMENTS = ("exp_avg", "exp_avg_sq")


def save_state(learner, path: str) -> str:
    tensors = _collect_tensors(learner)
    if distributed.is_rank0():
        from safetensors.torch import save_file

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(out / "state.safetensors"))
        meta = {"format": FORMAT, "steps": learner.steps, "base_model": learner.model_path,
                "lora": asdict(learner.lora), "has_optimizer_state": any(k.startswith("step/") for k in tensors)}
        (out / "state.json").write_text(json.dumps(meta, indent=2))
    distributed.barrier()
    learner.save_adapter(str(Path(path) / "adapter"))
    return path


def _collect_tensors(learner) -> dict[str, torch.Tensor]:
    """Full (unpartitioned) CPU copies; under ZeRO every rank must call this, in the same order."""
    tensors: dict[str, torch.Tensor] = {}
    if learner.engine is None:
        for name, p in learner.named_params:
            tensors[f"param/{name}"] = p.detach().cpu().clone()
            state = learner.optimizer.state.get(p, {})
            if "step" in state:
                for key in MOMENTS:
                    tensors[f"{key}/{name}"] = state[key].detach().cpu().clone()
                tensors[f"step/{name}"] = torch.as_tensor(state["step"]).detach().cpu().clone().reshape(())
        return tensors
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    step = _zero_step(learner)
    for name, p in learner.named_params:
        tensors[f"param/{name}"] = safe_get_full_fp32_param(p).cpu().clone()
        if step is not None:
            for key in MOMENTS:
                tensors[f"{key}/{name}"] = safe_get_full_optimizer_state(p, key).cpu().clone()
            tensors[f"step/{name}"] = step.clone()
    return tensors


def _flat_partitions(learner) -> list[torch.Tensor]:
    """This rank's fp32 master partitions: the tensors the inner torch AdamW steps and keys its state by."""
    if distributed.zero_stage(learner.engine) == 3:
        return list(learner.optimizer.fp32_partitioned_groups_flat)
    return list(learner.optimizer.single_partition_of_fp32_groups)


def _zero_step(learner) -> torch.Tensor | None:
    """AdamW's step counter of this rank's partitions (all ranks step together), None before step 1."""
    inner = learner.optimizer.optimizer
    for flat in _flat_partitions(learner):
        if "step" in inner.state.get(flat, {}):
            return torch.as_tensor(inner.state[flat]["step"]).detach().cpu().reshape(())
    return None


def load_state(learner, path: str, with_optimizer: bool = True) -> None:
    meta, tensors = _read(path)
    _check_matches(learner, path, tensors)
    has_moments = with_optimizer and meta.get("has_optimizer_state", False)
    if learner.engine is None:
        _load_single(learner, tensors, has_moments)
    else:
        _load_zero(learner, tensors, has_moments)
    learner.steps = int(meta["steps"]) if with_optimizer else 0


def _read(path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"load_state: {path} does not exist or is not a directory")
    try:
        meta = json.loads((root / "state.json").read_text())
    except FileNotFoundError:
        raise ValueError(f"load_state: {path} is not a learner state (no state.json)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"load_state: {path}/state.json is corrupt ({exc})") from None
    found = meta.get("format") if isinstance(meta, dict) else None
    if found != FORMAT:
        raise ValueError(f"load_state: {path}/state.json has format {found!r}, expected {FORMAT!r}")
    try:
        from safetensors.torch import load_file

        tensors = load_file(str(root / "state.safetensors"))
    except FileNotFoundError:
        raise ValueError(f"load_state: {path} has no state.safetensors") from None
    except Exception as exc:  # safetensors raises its own error types for truncated or garbled files
        raise ValueError(f"load_state: {path}/state.safetensors is corrupt ({type(exc).__name__}: {exc})") from None
    return meta, tensors


def _check_matches(learner, path: str, tensors: dict[str, torch.Tensor]) -> None:
    """The state must hold exactly this learner's trainable parameters (same LoRA targets and rank)."""
    for name, p in learner.named_params:
        saved = tensors.get(f"param/{name}")
        if saved is None:
            raise ValueError(f"load_state: {path} lacks parameter {name}: saved with other LoRA targets?")
        shape = tuple(getattr(p, "ds_shape", p.shape))
        if tuple(saved.shape) != shape:
            raise ValueError(f"load_state: {path} has {name} with shape {tuple(saved.shape)}, this learner "
                             f"has {shape}: saved with another LoRA rank or model?")
    extra = {k.split("/", 1)[1] for k in tensors} - {n for n, _ in learner.named_params}
    if extra:
        raise ValueError(f"load_state: {path} has parameters this learner lacks, e.g. {sorted(extra)[0]}")


def _load_single(learner, tensors: dict[str, torch.Tensor], has_moments: bool) -> None:
    learner.optimizer.zero_grad(set_to_none=True)
    learner.optimizer.state.clear()
    with torch.no_grad():
        for name, p in learner.named_params:
            p.copy_(tensors[f"param/{name}"])
            if has_moments and f"step/{name}" in tensors:
                learner.optimizer.state[p] = {
                    "step": tensors[f"step/{name}"].clone(),
                    **{key: tensors[f"{key}/{name}"].to(device=p.device, dtype=p.dtype) for key in MOMENTS}}


def _load_zero(learner, tensors: dict[str, torch.Tensor], has_moments: bool) -> None:
    """Each rank keeps only its slice of the fp32 master weights and Adam moments (ZeRO-3: of the weights too)."""
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    zero, stage = learner.optimizer, distributed.zero_stage(learner.engine)
    inner = zero.optimizer
    inner.state.clear()
    if has_moments:  # torch AdamW creates its state lazily at the first step: create it to fill it
        step = next(t for k, t in tensors.items() if k.startswith("step/"))
        for flat in _flat_partitions(learner):
            inner.state[flat] = {"step": step.clone(), "exp_avg": torch.zeros_like(flat),
                                 "exp_avg_sq": torch.zeros_like(flat)}
    if stage < 3:  # ZeRO-1/2 parameters point at views of the state: re-point them at the new tensors
        zero._hp_optimizer_states_linked = False
        if has_moments:
            zero._lazy_init_hp_params_optimizer_state()
    with torch.no_grad():
        # the model's copy: whole on every rank (ZeRO-1/2) or partitioned again from rank 0's values (ZeRO-3)
        with distributed.gathered(learner.params, learner.engine, modifier_rank=0):
            for name, p in learner.named_params:
                p.copy_(tensors[f"param/{name}"].to(device=p.device, dtype=p.dtype))
        for name, p in learner.named_params:
            safe_set_full_fp32_param(p, tensors[f"param/{name}"].float().to(p.device))
            if has_moments:
                for key in MOMENTS:
                    safe_set_full_optimizer_state(p, tensors[f"{key}/{name}"].to(p.device), key)
    distributed.barrier()
