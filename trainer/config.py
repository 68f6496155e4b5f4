"""The run's configuration: one plain dataclass, composed by Hydra from configs/ (env, model, backend and
experiment groups) plus command-line overrides, and checked before anything starts.

    ttt train +experiment=seeds_cp26 steps=3 out=runs/cp26

`model=NAME` picks configs/model/NAME.yaml; any other value (a hub name or a local path) becomes
base_model=VALUE on top of configs/model/custom.yaml. Entries of the free-form dicts (env.*, sampler_args.*,
learner_args.*, chat_template_kwargs.*, loss_fn_config.*) are set without Hydra's `+`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

PIPELINES = ("sync", "stream", "async")
MODES = ("train", "frozen", "best_of_n", "expert_iteration")
ADVANTAGES = ("entropic_adaptive_beta", "entropic", "mean_baseline", "grpo")
LOSSES = ("importance_sampling", "ppo", "cispo", "dro")


@dataclass
class TrainConfig:
    # -- the task: a Hydra node (`_target_` + the env's arguments), from configs/env/*.yaml
    env: dict = field(default_factory=lambda: {"_target_": "envs.toy_digits.ToyDigitsEnv"})
    env_name: str = "toy_digits"  # set by the env group; names the run and the pictures
    # -- the run
    out: str = "runs/train"
    resume: bool = False  # true: continue from the latest checkpoint in `out` (a fresh start if none)
    mode: str = "train"  # train | frozen (no updates) | best_of_n (no updates, no reuse) | expert_iteration
    steps: int = 50
    groups: int = 8  # G: states (prompts) per step
    group_size: int = 64  # K: rollouts per state
    seed: int = 0
    # -- the model and its LoRA (configs/model/*.yaml)
    base_model: str = "tiny"
    lora_rank: int = 32
    train_attn: bool = True
    train_mlp: bool = True
    train_unembed: bool = False  # vLLM cannot serve an lm_head LoRA
    init_adapter: str | None = None  # start from an SFT adapter (`ttt sft`'s out dir): trainer/init_adapter.py
    learning_rate: float = 4e-5
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip_norm: float = 0.0
    loss_fn: str = "importance_sampling"
    loss_fn_config: dict = field(default_factory=dict)
    # -- sampling
    max_tokens: int = 26000
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list = field(default_factory=list)  # extra stop strings, e.g. ["\n```\n"]: end at the code block's close
    max_model_len: int = 32768
    chat_template_kwargs: dict = field(default_factory=dict)  # e.g. {reasoning_effort: high}
    thinking_budget: int = 0  # > 0: two-phase sampling (thinking, forced prefill, final answer)
    final_budget: int = 2048
    prefill_text: str = "... okay, I am out of thinking tokens. I need to send my final message now."
    # -- advantages
    advantage: str = "entropic_adaptive_beta"
    advantage_beta: float = 2.0  # the fixed beta of advantage=entropic
    kl_coef: float = 0.0  # lambda of the KL-to-base penalty folded into the advantages (paper: 0.1)
    # the policy the KL penalty measures against: base | init_adapter (the SFT adapter the run started from, as
    # RLHF's reference policy) | auto (init_adapter when the run has one, else base)
    kl_reference: str = "auto"
    expert_top_k: int = 1  # expert_iteration: the best valid rollouts per group that are imitated
    # -- state reuse
    state_sampler: str = "puct"  # puct | greedy | fixed
    puct_c: float = 1.0
    topk_children: int = 2
    max_buffer_size: int = 1000
    epsilon: float = 0.125  # greedy only
    # -- curriculum over task instances: env overrides in order, e.g. [{n: 10}, {n: 18}, {n: 26}]
    curriculum: list = field(default_factory=list)
    promote_valid_rate: float = 0.5  # move on once a step's valid rate reaches this ...
    promote_reward: float | None = None  # ... and (if set) its best reward reaches this
    # -- adaptive batch: the next step's groups from this step's valid rate
    adaptive_batch: bool = False
    min_groups: int = 2
    max_groups: int = 32
    target_valid_rate: float = 0.5
    # -- where the parts run (configs/backend/*.yaml)
    backend: str = "local"  # local (our learner + sampler) | tinker (the official SDK; base_url)
    base_url: str | None = None  # backend=tinker: a `ttt serve` URL, or null for Tinker's cloud
    api_key: str | None = None  # backend=tinker: else TINKER_API_KEY
    sampler: str = "vllm"  # backend=local: vllm | server (vLLM OpenAI servers) | hf
    server_urls: list = field(default_factory=list)  # sampler=server; else TTT_VLLM_URLS (comma-separated)
    num_servers: int = 1
    sampler_args: dict = field(default_factory=dict)  # to the engine unchanged (vLLM LLM kwargs)
    learner_args: dict = field(default_factory=dict)  # to LoRALearner (dtype, micro-batch budget, ...)
    verifier_backend: str = "ray"  # ray | local
    # -- how a step's phases overlap (trainer/pipeline.py): sync (sample all, verify all, train: the paper's
    # order), stream (each sequence goes to the verifier as it ends; same results as sync), async (the next
    # step samples while this one verifies and trains, at most max_steps_off_policy adapter versions behind)
    pipeline: str = "stream"
    max_steps_off_policy: int = 1
    # async: the share of this step's sequences that must have ended before the next step starts sampling.
    # 1.0: one step samples at a time; lower lets the next step's sampling overlap this step's longest
    # sequences. The next step samples with the same adapter as with 1.0, so staleness stays <= 1. It pays
    # where the sampling service runs two adapters' requests at once (Tinker's cloud); our local engines
    # serve one adapter per engine call, so there the next step's requests wait for the running call
    prefetch_at: float = 1.0
    verifier_address: str | None = None  # a Ray cluster HOST:PORT; else RAY_ADDRESS; else a local Ray
    # what generated programs are promised (envs/sandbox/isolation.py): strict | namespaces | minimal. A host that
    # cannot keep it refuses to start the run, in one line; weaker levels only by name. Tasks without programs: unused
    sandbox_isolation: str = "strict"
    # -- proof of serving: the sampler must serve the adapter the learner trained
    mismatch_threshold: float = 1e-3
    on_mismatch: str = "stop"  # stop | warn
    probe_every_swap: bool = True
    # -- checkpoints and metrics
    save_every: int = 1
    keep_checkpoints: int = 3
    picture_every_s: float = 60.0  # best.png is redrawn at most this often (and at the end); best.json always
    wandb_mode: str = "offline"  # offline | online | disabled
    wandb_project: str = "ttt"
    progress: bool = True

    def check(self) -> None:
        """Every problem that would stop the run later, as one line, before anything starts."""
        for name in ("steps", "groups", "group_size", "max_tokens", "lora_rank", "save_every", "max_model_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        choices = {"mode": MODES, "advantage": ADVANTAGES, "loss_fn": LOSSES, "backend": ("local", "tinker"),
                   "sampler": ("vllm", "server", "hf"), "verifier_backend": ("ray", "local"),
                   "on_mismatch": ("stop", "warn"), "state_sampler": ("puct", "puct_backprop", "greedy", "fixed"),
                   "wandb_mode": ("offline", "online", "disabled"), "pipeline": PIPELINES}
        from envs.sandbox.isolation import LEVELS

        choices["sandbox_isolation"] = LEVELS
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        if self.temperature != 1.0 and self.backend == "tinker" and not self.base_url:
            raise ValueError(f"temperature={self.temperature} on Tinker's cloud: its learner does not replay the "
                             "sampling temperature, so importance ratios would be wrong; use temperature=1, or a "
                             "local backend / ttt serve")
        if self.max_steps_off_policy not in (0, 1):
            raise ValueError(f"max_steps_off_policy must be 0 or 1, got {self.max_steps_off_policy}: pipeline=async "
                             "samples at most one step ahead (a deeper prefetch would pick its states from the "
                             "same buffer twice); 0 makes async behave as stream")
        if not 0 < self.prefetch_at <= 1:
            raise ValueError(f"prefetch_at must be in (0, 1], got {self.prefetch_at}: the share of a step's "
                             "sequences that end before pipeline=async starts sampling the next step")
        biggest = max(self.groups, self.max_groups if self.adaptive_batch else 0)
        if not (1 <= biggest <= 512 and 1 <= self.group_size <= 256):
            raise ValueError(f"groups (and max_groups) must be in 1..512 and group_size in 1..256, got groups "
                             f"{biggest}, group_size {self.group_size}: each group's samples get a block of 256 "
                             "seeds (trainer/rollouts.py group_seed)")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {self.kl_coef}")
        if self.kl_reference not in ("auto", "base", "init_adapter"):
            raise ValueError(f"kl_reference must be auto, base or init_adapter, got {self.kl_reference!r}")
        if self.kl_reference == "init_adapter" and not self.init_adapter:
            raise ValueError("kl_reference=init_adapter needs init_adapter=<the out dir of `ttt sft`>, or use "
                             "kl_reference=base")
        if self.picture_every_s < 0:
            raise ValueError(f"picture_every_s must be >= 0 (0: draw at every improvement), got {self.picture_every_s}")
        if not isinstance(self.env, dict) or "_target_" not in self.env:
            raise ValueError("env must be an env config with _target_: pick one with env=NAME (see configs/env/)")
        if self.adaptive_batch and not 1 <= self.min_groups <= self.max_groups:
            raise ValueError(f"adaptive_batch needs 1 <= min_groups <= max_groups, got {self.min_groups}, "
                             f"{self.max_groups}")
        if any(not isinstance(c, dict) for c in self.curriculum):
            raise ValueError("curriculum must be a list of env overrides, e.g. [{n: 10}, {n: 26}]")
        if self.thinking_budget and self.thinking_budget + self.final_budget > self.max_model_len:
            raise ValueError(f"thinking_budget + final_budget ({self.thinking_budget + self.final_budget}) exceed "
                             f"max_model_len {self.max_model_len}")
        if self.backend == "local" and self.mode != "best_of_n":
            from inference.models import resolve_model

            resolve_model(self.base_model)  # ModelNotFound (a ValueError) names the fix
        if self.init_adapter:
            from trainer.init_adapter import check

            check(self)  # the adapter exists and fits this run's backend, base model and LoRA shape

    @property
    def trains(self) -> bool:
        return self.mode in ("train", "expert_iteration")

    @property
    def kl_reference_policy(self) -> str:
        """base or init_adapter: kl_reference with auto resolved."""
        if self.kl_reference == "auto":
            return "init_adapter" if self.init_adapter else "base"
        return self.kl_reference

    def ray_address(self) -> str | None:
        return self.verifier_address or os.environ.get("RAY_ADDRESS") or None

    def vllm_urls(self) -> list[str]:
        if self.server_urls:
            return list(self.server_urls)
        return [u for u in os.environ.get("TTT_VLLM_URLS", "").split(",") if u]


CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def config_dir() -> Path:
    return Path(os.environ.get("TTT_CONFIG_DIR", CONFIG_DIR))


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def _check_groups(overrides: list[str]) -> list[str]:
    """Group choices the user got wrong are named with the options; model=PATH becomes base_model=PATH."""
    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"overrides are key=value, got {item!r} (e.g. steps=3 or +experiment=demo)")
        group = key.lstrip("+~")
        if group in ("env", "backend", "experiment", "model") and value not in group_options(group):
            if group == "model":  # a hub name or a local path
                out += ["model=custom", f"base_model={value}"]
                continue
            raise ValueError(f"unknown {group} {value!r}; choose one of {', '.join(group_options(group))}")
        if not key.startswith(("+", "~")) and key.split(".", 1)[0] in OPEN_DICTS and "." in key:
            item = "++" + item  # a free-form dict (env args, vLLM / learner kwargs): add or override the entry
        out.append(item)
    return out


OPEN_DICTS = ("env", "sampler_args", "learner_args", "chat_template_kwargs", "loss_fn_config")


def compose(overrides: list[str]) -> TrainConfig:
    """configs/train.yaml <- groups <- overrides, merged into TrainConfig and checked."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from hydra.core.config_store import ConfigStore

    overrides = _check_groups(list(overrides))
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)  # every key exists and is typed
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
            raw = hydra_compose(config_name="train", overrides=overrides, return_hydra_config=True)
        env_name = raw.hydra.runtime.choices.get("env")
        OmegaConf.set_struct(raw, False)
        raw.pop("hydra")
        if env_name and "env_name=" not in " ".join(overrides):
            raw.env_name = env_name
        merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), raw)
        cfg = OmegaConf.to_object(merged)
    except (HydraException, OmegaConfBaseException) as e:
        allowed = ", ".join(f.name for f in fields(TrainConfig))
        raise ValueError(f"bad train config: {str(e).splitlines()[0]} (keys: {allowed})") from None
    cfg.check()
    return cfg


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(cfg)
