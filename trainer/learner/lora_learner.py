"""A PEFT LoRA learner with Tinker's TrainingClient semantics (../shared/docs/TINKER_API.md 3.2, 4, 5).

forward_backward accumulates summed-loss gradients over Datums until optim_step applies one AdamW step;
outputs carry per-datum token logprobs and `name:reduction` metrics. One process, or many under
`accelerate launch` with DeepSpeed ZeRO (trainer/distributed.py): then every rank gets the same call with the
full list of datums, works on its shard, and returns the same result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from trainer import distributed
from trainer.learner import state as learner_state
from trainer.learner.custom import run_custom_loss
from trainer.learner.inputs import PreparedDatum, fields_for, plan_micro_batches, prepare_data, shard_by_tokens
from trainer.learner.logprobs import LM_HEAD_MODEL_TYPES, PACKABLE_MODEL_TYPES, batch_logprobs, shared_prefix_logprobs
from trainer.learner.prefix import (PrefixGroup, allow_cache_under_checkpointing, find_groups, kv_ratio,
                                    plan_shared, shard_groups)
from trainer.losses import check_loss, rows_with_gradient, token_loss_sum

ATTN_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP_MODULES = ["gate_proj", "up_proj", "down_proj"]
UNEMBED_MODULES = ["lm_head"]
# A rank with no datums left still runs a pass on this so that it joins the other ranks' collectives.
_IDLE_DATUM = PreparedDatum([0], {"target_tokens": torch.zeros(1, dtype=torch.long)})


def _local_groups(groups: list[PrefixGroup]) -> list[PrefixGroup]:
    """A pass's groups with members renumbered to positions in the pass's batch (members in group order)."""
    out, at = [], 0
    for g in groups:
        out.append(PrefixGroup(list(range(at, at + len(g.members))), g.shared))
        at += len(g.members)
    return out


@dataclass(frozen=True)
class LoraSpec:
    """Tinker's LoraConfig. train_unembed defaults to False here because vLLM cannot serve lm_head LoRA."""
    rank: int = 8
    alpha: float = 32.0
    seed: int = 0
    train_attn: bool = True
    train_mlp: bool = True
    train_unembed: bool = False

    def target_modules(self) -> list[str]:
        modules = (ATTN_MODULES if self.train_attn else []) + (MLP_MODULES if self.train_mlp else [])
        modules += UNEMBED_MODULES if self.train_unembed else []
        if not modules:
            raise ValueError("LoRA trains nothing: set at least one of train_attn, train_mlp, train_unembed")
        return modules


@dataclass(frozen=True)
class AdamParams:
    """Same fields and defaults as tinker.AdamParams, for callers that do not import tinker."""
    learning_rate: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-12
    weight_decay: float = 0.0
    grad_clip_norm: float = 0.0


def resolve_dtype(dtype: torch.dtype | str, device: str) -> torch.dtype:
    """dtype "auto" = bf16 on GPU, fp32 on CPU (fp32 keeps learner and fp32 vLLM logprobs within ~3e-6)."""
    if dtype == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


class LoRALearner:
    def __init__(self, model_path: str, lora: LoraSpec = LoraSpec(), dtype: torch.dtype | str = "auto",
                 device: str = "cpu", micro_batch_tokens: int = 8192, gradient_checkpointing: bool = False,
                 packing: bool | None = None, prefix_sharing: bool | None = None,
                 attn_implementation: str | None = None, use_deepspeed: bool | None = None,
                 base_model: torch.nn.Module | None = None, model_id: str = "local:train:0"):
        """`model_path`: a local HF dir (also the tokenizer id). `base_model`: an already built causal LM to use
        instead of loading one (benchmarks). `use_deepspeed`: None = when started by `accelerate launch` with
        a DeepSpeed config. `packing`: padding-free micro-batches where the architecture supports it; None = only
        with a varlen (flash) attention kernel: SDPA and eager attention build a full mask over a packed pass, so
        there packing costs O(pass^2) and padded micro-batches are several times faster (bench_trl: 2.5 -> 0.7 s).

        `prefix_sharing`: datums that start with the same tokens (a group's prompt) run that prefix once per pass
        (trainer/learner/prefix.py); None = wherever it is supported (a chunked-lm_head model type, no packing, no
        ZeRO-3; with or without gradient checkpointing), which is exact up to float rounding.

        `micro_batch_tokens`: the token budget of one forward/backward pass (packed: the sum of the datums'
        lengths; padded: rows x the longest). Datums are grouped under it, a datum longer than it gets a pass
        of its own, and gradients of all passes add up (sum reduction), so any budget gives the result of one
        big batch; activation memory is bounded by the budget, not by the number of datums. The (T, V) logits
        of a pass are never built on LM_HEAD_MODEL_TYPES (lm_head + log-softmax run in row chunks; not under
        ZeRO-3)."""
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        device = distributed.local_device(device)
        self.dtype = resolve_dtype(dtype, device)
        if base_model is None:
            extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
            base_model = AutoModelForCausalLM.from_pretrained(model_path, dtype=self.dtype, **extra)
        base_model = base_model.to(device=device, dtype=self.dtype)
        base_model.requires_grad_(False)  # only LoRA matrices train; get_peft_model also freezes, say it here
        torch.manual_seed(lora.seed)  # the LoRA A init draws from the global generator
        config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, target_modules=lora.target_modules(),
                            lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
        self.model = get_peft_model(base_model, config)
        if gradient_checkpointing:  # non-reentrant: frozen embeddings need no requires_grad hack
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model.train()  # dropout is 0 everywhere, so train mode only switches checkpointing on
        self.model_path, self.model_id, self.lora, self.device = model_path, model_id, lora, device
        self.micro_batch_tokens = micro_batch_tokens
        self.model_config = base_model.config
        self.vocab_size = base_model.config.vocab_size
        varlen = "flash" in str(getattr(base_model.config, "_attn_implementation", "") or "")
        self.packing = (varlen if packing is None else packing) and base_model.config.model_type in PACKABLE_MODEL_TYPES
        self.named_params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in self.named_params]
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-4, betas=(0.9, 0.95), eps=1e-12, weight_decay=0.0)
        self.engine = None
        if distributed.launched_with_deepspeed() if use_deepspeed is None else use_deepspeed:
            self.engine, self.optimizer = distributed.wrap_with_deepspeed(self.model, self.optimizer)
            self.device = str(self.engine.device)  # where DeepSpeed placed this rank's model
        # Chunked lm_head (logprobs.chunked_target_logprobs): the model returns the decoder's output and
        # no pass builds its (T, V) logits. Not under ZeRO-3: it partitions lm_head's weight and does not gather
        # it again when checkpointing recomputes a chunk in backward, so there each pass builds its full logits.
        chunked = base_model.config.model_type in LM_HEAD_MODEL_TYPES and distributed.zero_stage(self.engine) < 3
        self.lm_head = self.model.get_output_embeddings() if chunked else None
        self.decoder = self.model.get_base_model().get_decoder() if chunked else None
        # Shared-prefix passes read the decoder's hidden states (the chunked lm_head's path) and carry a KV cache
        # through training; packing already removes the padding they would save.
        supported = chunked and not self.packing
        if prefix_sharing and not supported:
            raise ValueError("prefix_sharing needs a chunked-lm_head model type "
                             f"({sorted(LM_HEAD_MODEL_TYPES)}), no ZeRO-3 and no packing: turn one of them off, "
                             "or leave prefix_sharing unset (auto)")
        self.prefix_sharing = supported if prefix_sharing is None else prefix_sharing
        if self.prefix_sharing and gradient_checkpointing:
            allow_cache_under_checkpointing(self.model)
        self.steps = 0

    # -- compute --------------------------------------------------------------------------------------
    def _call_model(self, **inputs) -> torch.Tensor:
        """The logits, or with a chunked lm_head the decoder's last hidden states (the model's own lm_head then
        runs on one position only: logits_to_keep=1)."""
        module = self.engine if self.engine is not None else self.model
        # use_cache=False: a KV cache would also stop transformers from reading packing from position_ids
        inputs = {"use_cache": False, **inputs}  # a shared-prefix pass brings its own cache
        if self.lm_head is None:
            return module(**inputs).logits
        captured: list[torch.Tensor] = []
        handle = self.decoder.register_forward_hook(
            lambda _module, _args, out: captured.append(out[0] if isinstance(out, tuple) else out.last_hidden_state))
        try:
            module(**inputs, logits_to_keep=1)
        finally:
            handle.remove()
        return captured[-1]

    def _run(self, prepared: list[PreparedDatum], loss_fn: str | None, config: dict[str, float],
             backward: bool) -> tuple[list[torch.Tensor], float]:
        """Logprobs of every datum and the summed loss; with backward, gradients accumulate.

        Micro-batches hold at most micro_batch_tokens tokens; under DeepSpeed each rank takes a token-balanced
        shard and all ranks run the same number of passes (ZeRO reduces gradients, and ZeRO-3 gathers weights,
        in collectives that every rank must join).
        """
        lengths = [len(d.tokens) for d in prepared]
        world = distributed.world_size() if self.engine is not None else 1
        mine = self._shard(prepared, world) if world > 1 else list(range(len(prepared)))
        shared = self._prefix_plan([prepared[i].tokens for i in mine])
        if shared is not None:  # passes of prefix groups; a pass's datums are its groups' members, in order
            plan = [[mine[i] for g in groups for i in g.members] for groups in shared]
        else:
            plan = [[mine[j] for j in group]
                    for group in plan_micro_batches([lengths[i] for i in mine], self.micro_batch_tokens, self.packing)]
        n_passes = distributed.all_reduce_max(len(plan)) if world > 1 else len(plan)
        call_model = self._call_model
        temperature = config.get("temperature", 1.0)
        if temperature != 1.0:  # lm_head is linear without bias, so scaling its input scales the logits too
            call_model = lambda **inputs: self._call_model(**inputs) / temperature  # noqa: E731
        logprobs: dict[int, torch.Tensor] = {}
        total = 0.0
        for p in range(n_passes):
            idx = plan[p] if p < len(plan) else []
            batch = [prepared[i] for i in idx] or [_IDLE_DATUM]
            grad_rows = ([rows_with_gradient(loss_fn, d.inputs) for d in batch]
                         if backward and idx and loss_fn is not None else None)
            with torch.set_grad_enabled(backward):
                if shared is not None and idx:
                    lps = shared_prefix_logprobs(call_model, batch, _local_groups(shared[p]), self.device,
                                                 self.lm_head, grad_rows)
                else:
                    lps = batch_logprobs(call_model, batch, self.packing, self.device, self.lm_head,
                                         grad_rows)
                if idx and loss_fn is not None:
                    loss = sum(token_loss_sum(loss_fn, lp, {k: v.to(self.device) for k, v in d.inputs.items()},
                                              config) for lp, d in zip(lps, batch))
                    total += float(loss.detach())
                else:
                    loss = lps[0].sum() * 0.0
                if backward:
                    self._backward(loss, world)
            for i, lp in zip(idx, lps):
                logprobs[i] = lp.detach().cpu()
        if world > 1:
            total = distributed.all_reduce_sum(total)
            for part in distributed.all_gather_objects(logprobs):
                logprobs.update(part)
        return [logprobs[i] for i in range(len(prepared))], total

    def _shard(self, prepared: list[PreparedDatum], world: int) -> list[int]:
        """This rank's datums: whole prefix groups where sharing is on (a group split over ranks runs its
        prefix on each of them), else a token-balanced share."""
        tokens = [d.tokens for d in prepared]
        lengths = [len(t) for t in tokens]
        if self.prefix_sharing and all(n >= 2 for n in lengths):
            return shard_groups(find_groups(tokens), lengths, world)[distributed.rank()]
        return shard_by_tokens(lengths, world)[distributed.rank()]

    def _prefix_plan(self, tokens: list[list[int]]) -> list[list[PrefixGroup]] | None:
        """Shared-prefix passes over these datums (indices into `tokens`), or None for plain passes: when
        sharing is off or unsupported here, or no two datums share a prefix."""
        if not self.prefix_sharing or any(len(t) < 2 for t in tokens):
            return None
        groups = find_groups(tokens)
        if all(len(g.members) == 1 for g in groups):
            return None
        return plan_shared(groups, [len(t) for t in tokens], self.micro_batch_tokens, kv_ratio(self.model_config))

    def _backward(self, loss: torch.Tensor, world: int) -> None:
        if self.engine is None:
            loss.backward()
        else:  # DeepSpeed averages gradients over ranks; Tinker sums over all datums of all ranks
            self.engine.backward(loss * world)

    # -- Tinker operations ----------------------------------------------------------------------------
    def forward_backward(self, data: Sequence[Any], loss_fn: str, loss_fn_config: dict | None = None,
                         forward_only: bool = False) -> dict:
        """Sum-reduced loss over all tokens of all datums; gradients accumulate until optim_step.

        Returns {"loss_fn_outputs": [{"logprobs": tensor shaped like target_tokens}], "metrics": {"loss:sum"}}.
        """
        config = check_loss(loss_fn, loss_fn_config)
        prepared = prepare_data(data, fields_for(loss_fn), self.vocab_size, loss_fn,
                                allow_top_k=loss_fn == "cross_entropy")
        logprobs, total = self._run(prepared, loss_fn, config, backward=not forward_only)
        return {"loss_fn_outputs": [{"logprobs": lp} for lp in logprobs], "metrics": {"loss:sum": total}}

    def forward(self, data: Sequence[Any], loss_fn: str, loss_fn_config: dict | None = None) -> dict:
        """forward_backward without gradients: logprobs and loss metrics only."""
        return self.forward_backward(data, loss_fn, loss_fn_config, forward_only=True)

    def forward_backward_custom(self, data: Sequence[Any],
                                loss_fn: Callable[[list, list[torch.Tensor]], tuple[torch.Tensor, dict]]) -> dict:
        """Tinker's client-side custom loss: forward -> loss_fn(data, logprobs_list) -> d loss / d logprobs ->
        a cross_entropy forward_backward with weights = -gradient (~1.5x the FLOPs of a built-in loss).

        Metrics: loss:sum = the custom loss, surrogate_loss:sum = the cross_entropy pass's loss, plus
        loss_fn's own metrics.
        """
        prepared = prepare_data(data, ("target_tokens",), self.vocab_size, "forward_backward_custom",
                                allow_top_k=True)
        logprobs, _ = self._run(prepared, None, {}, backward=False)
        weights, custom_loss, custom_metrics = run_custom_loss(loss_fn, list(data), logprobs)
        linear = [PreparedDatum(d.tokens, {"target_tokens": d.inputs["target_tokens"], "weights": w})
                  for d, w in zip(prepared, weights)]
        logprobs, surrogate = self._run(linear, "cross_entropy", {}, backward=True)
        metrics = {**custom_metrics, "loss:sum": custom_loss, "surrogate_loss:sum": surrogate}
        return {"loss_fn_outputs": [{"logprobs": lp} for lp in logprobs], "metrics": metrics}

    def base_logprobs(self, data: Sequence[Any]) -> list[torch.Tensor]:
        """Target logprobs of the base model (adapter disabled), e.g. for a KL penalty, with no second copy."""
        prepared = prepare_data(data, ("target_tokens",), self.vocab_size, "base_logprobs", allow_top_k=True)
        with self.model.disable_adapter():
            logprobs, _ = self._run(prepared, None, {}, backward=False)
        return logprobs

    def optim_step(self, adam: Any) -> dict:
        """One AdamW step with Tinker's AdamParams (decoupled weight decay; grad_clip_norm 0 = no clipping).

        Returns {"grad_norm:mean": global gradient norm before clipping}; gradients are cleared.
        """
        for group in self.optimizer.param_groups:
            group.update(lr=adam.learning_rate, betas=(adam.beta1, adam.beta2), eps=adam.eps,
                         weight_decay=adam.weight_decay)
        if self.engine is not None:
            self.optimizer.clip_grad = float(adam.grad_clip_norm)  # ZeRO reads it at each step; 0 = off
            self.engine.step()
            grad_norm = float(self.engine.get_global_grad_norm() or 0.0)  # None: no gradient since last step
        else:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(
                self.params, adam.grad_clip_norm if adam.grad_clip_norm > 0 else float("inf")))
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        return {"grad_norm:mean": grad_norm}

    def save_adapter(self, path: str) -> str:
        """A PEFT adapter dir (adapter_config.json + adapter_model.safetensors) that vLLM and HF load.

        Written by rank 0 only; the other ranks wait until it is complete."""
        with distributed.gathered(self.params, self.engine):
            if distributed.is_rank0():  # the base lm_head is frozen: never copy it into the adapter
                self.model.save_pretrained(path, save_embedding_layers=False)
        distributed.barrier()
        return path

    def save_weights_for_sampler(self, path: str) -> str:
        return self.save_adapter(path)

    def save_state(self, path: str) -> str:
        """Adapter + AdamW state + step count, for load_state; a reloaded learner continues bit-exactly."""
        return learner_state.save_state(self, path)

    def load_state(self, path: str, with_optimizer: bool = True) -> None:
        """Restore a save_state dir; with_optimizer=False keeps the weights and starts a fresh optimizer."""
        learner_state.load_state(self, path, with_optimizer)

    def get_info(self):
        import tinker

        arch = (getattr(self.model_config, "architectures", None) or [self.model_config.model_type])[0]
        model_data = tinker.types.ModelData(arch=arch, model_name=self.model_path, tokenizer_id=self.model_path)
        return tinker.types.GetInfoResponse(model_id=self.model_id, model_data=model_data, is_lora=True,
                                            lora_rank=self.lora.rank, model_name=self.model_path)

    def get_tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.model_path)
