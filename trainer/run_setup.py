"""Building a run's parts: its task instances (env, verifier pool, state buffer) and its Tinker-shaped service
(Tinker's cloud, or our engine on these GPUs, started and stopped here)."""

from __future__ import annotations

import json
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from envs.base import State
from envs.pool import VerifierPool
from trainer import rank_sync
from trainer.config import TrainConfig
from trainer.state_sampler import StateSampler, make_state_sampler


@dataclass
class Instance:
    """One task instance: its env, its verifier pool and its own state buffer."""
    env: object
    pool: VerifierPool
    buffer: StateSampler


def instance(cfg: TrainConfig, overrides: dict, stack: ExitStack) -> Instance:
    from hydra.utils import instantiate

    env = instantiate({**cfg.env, **overrides})
    pool = VerifierPool(env, backend=cfg.verifier_backend, address=cfg.ray_address(),
                        progress=None if cfg.progress else False, progress_min=256,  # small steps: the table
                        isolation=cfg.sandbox_isolation)
    stack.callback(pool.close)
    if cfg.mode == "best_of_n":
        buffer = make_state_sampler("fixed")
    elif cfg.state_sampler == "greedy":
        buffer = make_state_sampler("greedy", epsilon=cfg.epsilon, topk_children=cfg.topk_children,
                                    max_buffer_size=cfg.max_buffer_size)
    elif cfg.state_sampler == "fixed":
        buffer = make_state_sampler("fixed")
    else:
        buffer = make_state_sampler(cfg.state_sampler, c=cfg.puct_c, topk_children=cfg.topk_children,
                                    max_buffer_size=cfg.max_buffer_size)
    return Instance(env, pool, buffer)


def initial_states(env, groups: int, rng) -> list[State]:
    """The env's initial states; a single-state env is asked `groups` times (random ones then differ), as
    the original creates batch_size initial states so that PUCT can fill every group at the first step."""
    states = list(env.initial_states(rng))
    if len(states) == 1:
        states += [s for _ in range(groups - 1) for s in env.initial_states(rng)]
    return states


def service(cfg: TrainConfig, sampler, out: Path, stack: ExitStack):
    from shim.factory import make_engine, make_service_client

    if cfg.backend == "tinker":
        return make_service_client("tinker", base_url=cfg.base_url, api_key=cfg.api_key)
    engine_kwargs = {"max_lora_rank": cfg.lora_rank, "max_model_len": cfg.max_model_len, "seed": cfg.seed,
                     **cfg.sampler_args}
    if cfg.sampler == "server":
        engine_kwargs.update(server_urls=cfg.vllm_urls(), num_servers=cfg.num_servers, log_dir=str(out))
    engine = make_engine(cfg.base_model, sampler=sampler, sampler_kind=cfg.sampler,
                         checkpoint_dir=str(out / "tinker"), max_lora_rank=cfg.lora_rank,
                         sampler_kwargs=engine_kwargs, learner_kwargs=cfg.learner_args,
                         learner_factory=rank_sync.BroadcastLearner if rank_sync.launched() else None)
    if sampler is None:  # we started it, we stop it
        stack.callback(engine.pool.sampler.close)
    service = make_service_client("local", engine=engine)
    stack.callback(service.close)
    if rank_sync.launched():  # registered last, so it runs first: before the session drops its learners
        stack.callback(stop_followers, engine, out)
    return service


def stop_followers(engine, out: Path) -> None:
    """End the other ranks and record that every rank holds the same weights (ranks.json)."""
    hashes = rank_sync.stop([model.learner for model in engine.models.all()])
    (out / "ranks.json").write_text(json.dumps({"world_size": len(hashes), "weights_hash": hashes,
                                                "agree": all(h == hashes[0] for h in hashes)}, indent=2))
    if any(h != hashes[0] for h in hashes):
        raise RuntimeError(f"ranks disagree on the trained weights: {hashes}")


KL_REFERENCE_NAME = "kl_reference"


def kl_reference(cfg: TrainConfig, service, training, saved: dict | None):
    """-> (the sampling client the KL penalty measures against, or None without one; its tinker:// path, kept in
    checkpoints). kl_reference=init_adapter: the SFT adapter's weights, saved for sampling before the first RL
    step, so that a resumed run measures against the same policy, not against its own trained weights."""
    if not (cfg.trains and cfg.kl_coef > 0):
        return None, None
    if cfg.kl_reference_policy == "base":
        return service.create_sampling_client(base_model=cfg.base_model).result(), None
    path = saved.get("kl_reference") if saved is not None else None
    if path is None and saved is not None:
        raise ValueError("this run's checkpoint has no kl_reference (it was written with kl_coef=0 or before the "
                         "option existed, and the SFT weights the run started from are no longer the learner's): "
                         "resume with kl_reference=base")
    if path is None:
        path = training.save_weights_for_sampler(KL_REFERENCE_NAME).result().path
    return service.create_sampling_client(model_path=path).result(), path
