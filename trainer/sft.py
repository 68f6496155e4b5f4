"""`ttt sft data.jsonl`: supervised fine-tuning of a LoRA on chat demonstrations, the usual start before RL.

Through the same Tinker-shaped client API as the RL loop (ServiceClient -> TrainingClient.forward_backward
(datums, "cross_entropy") + optim_step), so it runs on backend=local, on `ttt serve` and on Tinker alike. The
result is a saved adapter (save_state + save_weights_for_sampler, like the loop's checkpoints) described by
out/adapter.json; `ttt train init_adapter=OUT` starts RL from it (trainer/init_adapter.py).

    out/adapter.json    state_path / sampler_path (tinker://), local dirs (backend=local), loss before/after
    out/metrics.jsonl   one object per epoch: mean loss per answer token, optimizer steps, answer tokens
    out/config.json     the SFTConfig
    out/tinker/         backend=local: the checkpoint root (state, optimizer, PEFT adapter)

Loss figures are cross_entropy's sum over answer tokens divided by their number: the mean NLL per answer token.
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tinker import types

from trainer.datums import imitation_datum
from trainer.report import append_jsonl
from trainer.sft_data import demonstration, read_conversations

ADAPTER_FILE = "adapter.json"
CHECKPOINT_NAME = "sft"


@dataclass
class SFTConfig:
    data: str = ""  # the JSONL file of chat demonstrations (trainer/sft_data.py)
    out: str = "runs/sft"
    # -- the model and its LoRA (an RL run from this adapter must use the same base_model and lora_rank)
    base_model: str = "tiny"
    lora_rank: int = 32
    train_attn: bool = True
    train_mlp: bool = True
    train_unembed: bool = False  # vLLM cannot serve an lm_head LoRA
    # -- the optimization
    learning_rate: float = 1e-4
    epochs: int = 3
    batch_size: int = 8  # demonstrations per optimizer step
    seed: int = 0  # LoRA init and the order of demonstrations in each epoch
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip_norm: float = 0.0
    max_model_len: int = 32768  # a longer demonstration is an error, not silently cut
    chat_template_kwargs: dict = field(default_factory=dict)  # e.g. {enable_thinking: false}
    # -- where it runs
    backend: str = "local"  # local (our learner) | tinker (the official SDK: Tinker's cloud or `ttt serve`)
    base_url: str | None = None  # backend=tinker: a `ttt serve` URL, or null for Tinker's cloud
    api_key: str | None = None  # backend=tinker: else TINKER_API_KEY
    learner_args: dict = field(default_factory=dict)  # backend=local: to LoRALearner (dtype, device, ...)

    def check(self) -> None:
        """Every problem that would stop the run later, as one line, before anything starts."""
        if not self.data:
            raise ValueError("pass the demonstrations file: ttt sft data.jsonl")
        for name in ("lora_rank", "epochs", "batch_size", "max_model_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.backend not in ("local", "tinker"):
            raise ValueError(f"backend must be one of local, tinker; got {self.backend!r}")
        if self.backend == "local":
            from inference.models import resolve_model

            resolve_model(self.base_model)  # ModelNotFound (a ValueError) names the fix


def run_sft(cfg: SFTConfig, *, service=None, log=print) -> dict:
    """Train, save, and return the contents of out/adapter.json. `service`: a ready Tinker-shaped
    ServiceClient to use (tests); else one for cfg.backend is made and closed here."""
    cfg.check()
    out = Path(cfg.out)
    if (out / ADAPTER_FILE).exists():
        raise ValueError(f"{out} already holds an SFT adapter ({ADAPTER_FILE}): choose another out= or remove it")
    conversations = read_conversations(cfg.data)  # the file's shape, before a tokenizer or model is loaded
    demos = _demonstrations(cfg, conversations, _local_tokenizer(cfg)) if cfg.backend == "local" else None
    with ExitStack() as stack:
        if service is None:
            service = _service(cfg, out, stack)
        training = service.create_lora_training_client(
            base_model=cfg.base_model, rank=cfg.lora_rank, seed=cfg.seed, train_mlp=cfg.train_mlp,
            train_attn=cfg.train_attn, train_unembed=cfg.train_unembed).result()
        if demos is None:  # a Tinker server names the tokenizer (the SDK's get_tokenizer, as the loop uses)
            demos = _demonstrations(cfg, conversations, training.get_tokenizer())
        datums = [imitation_datum(d.prompt_tokens, d.answer_tokens) for d in demos]
        answer_tokens = sum(len(d.answer_tokens) for d in demos)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
        (out / "metrics.jsonl").unlink(missing_ok=True)  # left by an SFT run that never finished (no adapter.json)
        log(f"ttt sft: {len(demos)} demonstrations ({answer_tokens} answer tokens) from {cfg.data} on "
            f"{cfg.base_model} ({cfg.backend} backend), LoRA rank {cfg.lora_rank}, {cfg.epochs} epochs of batch "
            f"{cfg.batch_size} -> {out}")
        loss_before = mean_loss(training, datums, cfg.batch_size)
        log(f"before training: loss {loss_before:.4f}")
        _train(cfg, training, datums, out, log)
        loss_after = mean_loss(training, datums, cfg.batch_size)
        state_path = training.save_state(CHECKPOINT_NAME).result().path
        sampler_path = training.save_weights_for_sampler(CHECKPOINT_NAME).result().path
        summary = {"state_path": state_path, "sampler_path": sampler_path,
                   "local_state_dir": _local_dir(service, state_path, out),
                   "local_adapter_dir": _local_dir(service, sampler_path, out),
                   "backend": cfg.backend, "base_url": cfg.base_url, "base_model": cfg.base_model,
                   "lora_rank": cfg.lora_rank, "demonstrations": len(demos), "answer_tokens": answer_tokens,
                   "epochs": cfg.epochs, "loss_before": loss_before, "loss_after": loss_after}
    (out / ADAPTER_FILE).write_text(json.dumps(summary, indent=2))
    return summary


def _local_tokenizer(cfg: SFTConfig):
    """backend=local: the tokenizer the training client would give (tokenizer_id = the resolved model dir),
    loaded without starting a learner, so bad lines fail fast."""
    from transformers import AutoTokenizer

    from inference.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model(cfg.base_model))


def _demonstrations(cfg: SFTConfig, conversations: list, tokenizer) -> list:
    return [demonstration(tokenizer, cfg.data, number, messages, cfg.max_model_len, cfg.chat_template_kwargs)
            for number, messages in conversations]


def _service(cfg: SFTConfig, out: Path, stack: ExitStack):
    from shim.factory import make_engine, make_service_client

    if cfg.backend == "tinker":
        service = make_service_client("tinker", base_url=cfg.base_url, api_key=cfg.api_key)
    else:  # SFT never samples: the HF sampler is the engine's cheapest one (no vLLM start-up)
        engine = make_engine(cfg.base_model, sampler_kind="hf", checkpoint_dir=str(out / "tinker"),
                             max_lora_rank=cfg.lora_rank, sampler_kwargs={"max_model_len": cfg.max_model_len},
                             learner_kwargs=cfg.learner_args)
        service = make_service_client("local", engine=engine)
    return stack.enter_context(service)  # closed with the run's status (the SDK's close takes one)


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def _train(cfg: SFTConfig, training, datums: list, out: Path, log) -> None:
    """Each epoch visits every demonstration once in a seeded order; one optimizer step per batch. An epoch's
    requests are all submitted at once (the client runs them in order), as the SDK pipelines them."""
    rng = np.random.default_rng(cfg.seed)
    adam = types.AdamParams(learning_rate=cfg.learning_rate, beta1=cfg.adam_beta1, beta2=cfg.adam_beta2,
                            eps=cfg.adam_eps, weight_decay=cfg.weight_decay, grad_clip_norm=cfg.grad_clip_norm)
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        batches = [[datums[i] for i in idx] for idx in _batches(len(datums), cfg.batch_size, rng)]
        futures = [(training.forward_backward(batch, "cross_entropy"), training.optim_step(adam))
                   for batch in batches]
        loss_sum = 0.0
        for fb, optim in futures:
            loss_sum += fb.result().metrics["loss:sum"]
            optim.result()
        weights = sum(_weight(d) for batch in batches for d in batch)
        record = {"epoch": epoch, "loss": loss_sum / weights, "steps": len(batches), "answer_tokens": int(weights),
                  "t_epoch": time.perf_counter() - t0}
        append_jsonl(out / "metrics.jsonl", record)
        log(f"epoch {epoch}/{cfg.epochs}: loss {record['loss']:.4f} ({len(batches)} steps, "
            f"{record['t_epoch']:.1f} s)")


def mean_loss(training, datums: list, batch_size: int) -> float:
    """cross_entropy of the current weights (forward only): the mean NLL per answer token."""
    futures = [training.forward(datums[i:i + batch_size], "cross_entropy") for i in range(0, len(datums), batch_size)]
    return sum(f.result().metrics["loss:sum"] for f in futures) / sum(_weight(d) for d in datums)


def _weight(datum) -> float:
    return float(sum(datum.loss_fn_inputs["weights"].data))


def _local_dir(service, path: str, out: Path) -> str | None:
    """backend=local: the checkpoint's directory (relative to out when inside it, so the run dir can move);
    on a Tinker server the weights live there and only the tinker:// path is kept."""
    store = getattr(getattr(service, "engine", None), "store", None)
    if store is None:
        return None
    directory = store.parse(path).directory.resolve()
    try:
        return str(directory.relative_to(out.resolve()))
    except ValueError:
        return str(directory)
