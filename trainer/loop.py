"""The TTT-Discover loop, top to bottom, over the Tinker-shaped client API (our GPUs or Tinker's cloud):

  select states (PUCT) -> prompts -> sample G groups of K -> sandboxed verification on Ray -> rewards ->
  advantages (+ KL-to-base shaping) -> datums -> forward_backward(importance_sampling) -> optim_step ->
  new sampler version, proved on a probe -> buffer update -> metrics -> checkpoint.

Modes: train; frozen (same sampling and PUCT, no updates); best_of_n (no updates, no state reuse);
expert_iteration (cross_entropy on the best verified rollouts of each group). The output of a run is the best
state ever seen (out/best.json, out/best.png), not the policy.
"""

from __future__ import annotations

import json
import signal
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tinker import types

from envs.base import State
from envs.pool import VerifierPool
from trainer import distributed, init_adapter, rank_sync
from trainer import metrics as M
from trainer import report
from trainer.advantages import compute_advantages
from trainer.checkpoint import Checkpoints, RolloutLog, restore_rng, rng_states, truncate_metrics
from trainer.config import TrainConfig, to_dict
from trainer.curriculum import Curriculum, next_groups
from trainer.datums import imitation_datum, rollout_datum
from trainer.kl import fold_kl_penalty
from trainer.pipeline import Plan, Pipeline
from trainer.rollouts import Rollout, render_prompt
from trainer.state_sampler import StateSampler, make_state_sampler

PROBE_TEXT = "0123456789 circle packing 2.635"


class SamplerMismatch(RuntimeError):
    """The sampler is not serving the adapter the learner trained."""


class Preempted(RuntimeError):
    """SIGTERM: the last completed step is checkpointed; rerun with resume=true to continue."""


@dataclass
class Instance:
    """One task instance: its env, its verifier pool and its own state buffer."""
    env: object
    pool: VerifierPool
    buffer: StateSampler


def run(cfg: TrainConfig, *, sampler=None, service=None, log=print) -> list[dict]:
    """Run cfg.steps steps (continuing the latest checkpoint when cfg.resume). `sampler`: an inference sampler
    for the local backend to share (tests, benches); `service`: a ready Tinker-shaped ServiceClient."""
    cfg.check()
    if rank_sync.launched():  # `accelerate launch`: rank 0 runs the loop, the other ranks replay its learner
        rank_sync.init()
        if distributed.rank() != 0:
            rank_sync.follow()
            return []
    out = Path(cfg.out)
    checkpoints = Checkpoints(out, keep=cfg.keep_checkpoints)
    saved = checkpoints.latest() if cfg.resume else None
    if saved is None and (out / "metrics.jsonl").exists():
        raise ValueError(f"{out} already holds a run: pass resume=true to continue it, or choose another out=")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    with ExitStack() as stack:
        curriculum = Curriculum(list(cfg.curriculum), cfg.promote_valid_rate, cfg.promote_reward)
        instances = [_instance(cfg, overrides, stack) for overrides in curriculum.overrides]
        if service is None:
            service = _service(cfg, sampler, out, stack)
        stop = _preemption_flag(stack)
        return _loop(cfg, out, service, instances, curriculum, checkpoints, saved, stop, stack, log)


def _loop(cfg, out, service, instances, curriculum, checkpoints, saved, stop, stack, log) -> list[dict]:
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)  # anything stochastic on the torch side; saved and restored with the numpy state
    groups = cfg.groups
    best = None  # {"reward", "score", "construction", "text", "state", "step", "instance"}
    version = 0  # optimizer steps taken = the adapter version the sampler serves
    training = None
    if cfg.trains:
        adam = types.AdamParams(learning_rate=cfg.learning_rate, beta1=cfg.adam_beta1, beta2=cfg.adam_beta2,
                                eps=cfg.adam_eps, weight_decay=cfg.weight_decay, grad_clip_norm=cfg.grad_clip_norm)
        if saved is None and cfg.init_adapter:  # an SFT adapter's weights, a fresh optimizer
            training = init_adapter.training_client(service, cfg)
        elif saved is None:
            training = service.create_lora_training_client(
                base_model=cfg.base_model, rank=cfg.lora_rank, seed=cfg.seed, train_mlp=cfg.train_mlp,
                train_attn=cfg.train_attn, train_unembed=cfg.train_unembed).result()
        else:
            training = service.create_training_client_from_state_with_optimizer(saved["training_state"]).result()
        tokenizer = training.get_tokenizer()
    else:  # frozen / best_of_n: the base model samples, nothing trains
        tokenizer = service.create_sampling_client(base_model=cfg.base_model).result().get_tokenizer()
    base = (service.create_sampling_client(base_model=cfg.base_model).result()
            if cfg.trains and cfg.kl_coef > 0 else None)

    start = 0
    for inst in instances:
        inst.buffer.add_initial(_initial_states(inst.env, cfg.groups, rng))
    if saved is not None:
        start, version, groups, best = saved["step"] + 1, saved["version"], saved["groups"], saved["best"]
        restore_rng(rng, saved["rng"])
        curriculum.restore(saved["curriculum"])
        for inst, buffer in zip(instances, saved["buffers"]):
            inst.buffer = StateSampler.from_dict(buffer)
        log(f"resumed {out} after step {saved['step']} (adapter v{version}, buffer sizes "
            f"{[len(i.buffer) for i in instances]})")
    records = truncate_metrics(out / "metrics.jsonl", start, saved)
    pipe = Pipeline(cfg, tokenizer, RolloutLog(out / "rollouts.jsonl"), out)  # trainer/pipeline.py
    served = pipe.serve(service, training, version)
    if saved is not None and saved.get("next_batch"):  # async: the batch in flight at the checkpoint, again
        plan = Plan.from_dict(saved["next_batch"])
        pipe.ahead = pipe.start(plan, instances[plan.instance], pipe.served_for(plan, served, service))
    wandb = stack.enter_context(M.WandbRun(cfg, out, resume=saved is not None))
    best_writer = M.BestWriter(out, cfg.env_name, cfg.picture_every_s)
    stack.callback(best_writer.flush)  # a picture that lags is drawn at the end, also after an error
    probe_tokens = None
    if cfg.trains and saved is None:  # v0 (B = 0, or the init_adapter) must already be served
        probe_tokens = _probe_tokens(cfg, tokenizer, instances[0])
        _check_probe(cfg, training, served.client, probe_tokens, version, log)

    def begin(step: int):
        """1. select G states (PUCT) from the buffer as it stands now and build prompts; 2. start sampling G
        groups of K with the adapter served now (stream/async: each group goes to the verifier once sampled)."""
        inst_id = curriculum.current
        parents = _select(instances[inst_id].buffer, groups, rng)
        return pipe.start(Plan(step, inst_id, parents, served.version, served.path), instances[inst_id], served)

    log(report.table_header())
    for step in range(start, cfg.steps):
        step_rng_state = rng_states(rng)  # the state a preemption checkpoint of step-1 must hold
        t0 = time.perf_counter()
        prefetched = pipe.take(step)  # async: selected and sampling since the previous step
        batch = prefetched or begin(step)
        plan, inst = batch.plan, batch.inst
        rollouts = batch.sampled()
        t1 = time.perf_counter()
        if pipe.prefetches and step + 1 < cfg.steps:  # async: step+1 samples while this step verifies and trains
            pipe.ahead = begin(step + 1)

        def previous_step_state():  # nothing below mutates the run until the buffer update (4.)
            return _loop_state(cfg, step - 1, version, groups, best, curriculum, instances, training,
                               step_rng_state, out, prefetched.plan if prefetched else None)
        _raise_if(stop, cfg, checkpoints, step - 1, previous_step_state)

        # 3. the last evaluations end (sync: all start now); each is logged as it finishes, logged ones not redone
        batch.verified()
        rewards_G_K = np.array([r.result.reward for r in rollouts]).reshape(len(plan.parents), cfg.group_size)
        t2 = time.perf_counter()
        _raise_if(stop, cfg, checkpoints, step - 1, previous_step_state)

        # 4. buffer update (PUCT visit counts, children) and the best state ever seen (drawn when it improves)
        improved = _best_of(rollouts, best)
        if improved is not None:  # with its parent state, so `ttt eval` can verify it again
            parent_state = plan.parents[improved.pop("group")].state
            best = {**improved, "step": step, "instance": plan.instance, "parent_state": parent_state.to_dict(),
                    "task_id": parent_state.task_id, "program": _program(inst.env, improved["text"])}
            best_writer.write(best, inst.env)
        for r in rollouts:  # the parent as selected: async may have pruned it from the buffer since
            parent = plan.parents[r.group]
            child = _child_state(inst.env, r, parent.state) if r.result.ok else None
            inst.buffer.record(r.parent_id, child, r.result.value if child is not None else None,
                               admit=child is not None and inst.env.admits(child), parent=parent)
        inst.buffer.flush()

        # 5. advantages -> datums -> one optimizer step -> the sampler serves the new version
        train_stats = M.staleness_stats(rollouts, version)
        t2b = time.perf_counter()
        if cfg.trains:
            datums, trained, stats = _datums(cfg, rollouts, rewards_G_K, base)
            train_stats.update(stats)
            if datums:
                train_stats.update(_train(cfg, training, datums, trained, adam, step, version, log))
                version += 1
        t3 = time.perf_counter()
        if cfg.trains and train_stats.get("trained"):
            served = pipe.serve(service, training, version)
            if cfg.probe_every_swap:
                probe_tokens = probe_tokens or _probe_tokens(cfg, tokenizer, instances[0])
                train_stats["probe_mismatch"] = _check_probe(cfg, training, served.client, probe_tokens, version,
                                                             log)
        t4 = time.perf_counter()

        # 6. metrics, curriculum, batch size, checkpoint
        record = M.step_record(step, rollouts, rewards_G_K, inst.buffer, best, version, len(plan.parents),
                               plan.instance, train_stats,
                               {"t_sample": t1 - t0, "t_verify": t2 - t1, "t_buffer": t2b - t2, "t_train": t3 - t2b,
                                "t_swap": t4 - t3})
        n_valid = sum(r.result.ok for r in rollouts)
        # async: a step chosen before a promotion still ran on the previous instance; it does not count for the new
        record["promoted"] = plan.instance == curriculum.current and curriculum.record_step(
            step, n_valid, len(rollouts), float(rewards_G_K.sum()), float(rewards_G_K.max()))
        if cfg.adaptive_batch:
            groups = next_groups(groups, record["valid_rate"], cfg.target_valid_rate, cfg.min_groups,
                                 cfg.max_groups, len(rollouts))
        t5 = time.perf_counter()
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps or stop["set"]:
            checkpoints.write(step, _loop_state(cfg, step, version, groups, best, curriculum, instances, training,
                                                rng_states(rng), out, pipe.ahead.plan if pipe.ahead else None),
                              record)  # its line, should the run end before it is appended
        record["t_checkpoint"] = time.perf_counter() - t5
        record["t_step"] = time.perf_counter() - t0
        records.append(record)
        M.append_record(out, record)
        wandb.log(record)
        log(report.table_row(record))
        if stop["set"]:
            raise Preempted(f"SIGTERM: stopped after step {step}, checkpointed; rerun with resume=true")

    M.finish(out, records, best, instances[curriculum.current].env, cfg)
    return records


# ---- the pieces, in the order the loop uses them ----------------------------------------------------------

def _instance(cfg: TrainConfig, overrides: dict, stack: ExitStack) -> Instance:
    from hydra.utils import instantiate

    env = instantiate({**cfg.env, **overrides})
    pool = VerifierPool(env, backend=cfg.verifier_backend, address=cfg.ray_address(),
                        progress=None if cfg.progress else False, progress_min=256)  # small steps: the table
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


def _service(cfg: TrainConfig, sampler, out: Path, stack: ExitStack):
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
        stack.callback(_stop_followers, engine, out)
    return service


def _stop_followers(engine, out: Path) -> None:
    """End the other ranks and record that every rank holds the same weights (ranks.json)."""
    hashes = rank_sync.stop([model.learner for model in engine.models.all()])
    (out / "ranks.json").write_text(json.dumps({"world_size": len(hashes), "weights_hash": hashes,
                                                "agree": all(h == hashes[0] for h in hashes)}, indent=2))
    if any(h != hashes[0] for h in hashes):
        raise RuntimeError(f"ranks disagree on the trained weights: {hashes}")


def _preemption_flag(stack: ExitStack) -> dict:
    """SIGTERM (Slurm preemption) sets a flag; the loop checkpoints and stops at the next safe point."""
    flag = {"set": False}
    try:
        previous = signal.signal(signal.SIGTERM, lambda *_: flag.update(set=True))
        stack.callback(signal.signal, signal.SIGTERM, previous)
    except ValueError:  # not the main thread: no signal handling
        pass
    return flag


def _raise_if(stop, cfg, checkpoints: Checkpoints, completed: int, state_fn) -> None:
    """Before the step mutates anything: make sure step `completed` is checkpointed, then stop."""
    if not stop["set"]:
        return
    latest = checkpoints.latest()
    if completed >= 0 and (latest is None or latest["step"] < completed):
        checkpoints.write(completed, state_fn())
    raise Preempted(f"SIGTERM: stopped before step {completed + 1} (steps up to {completed} are checkpointed); "
                    "rerun with resume=true")


def _initial_states(env, groups: int, rng) -> list[State]:
    """The env's initial states; a single-state env is asked `groups` times (random ones then differ), as
    the original creates batch_size initial states so that PUCT can fill every group at the first step."""
    states = list(env.initial_states(rng))
    if len(states) == 1:
        states += [s for _ in range(groups - 1) for s in env.initial_states(rng)]
    return states


def _select(buffer: StateSampler, groups: int, rng) -> list:
    """PUCT returns fewer than `groups` states once every lineage is blocked; the picks are then reused in
    order (each gets more than one group), so every step has the same batch shape."""
    picked = buffer.select(groups, rng)
    if not picked:
        raise RuntimeError("the state buffer is empty: the env gave no initial state")
    return [picked[i % len(picked)] for i in range(groups)]


def _child_state(env, r: Rollout, parent: State) -> State:
    """A valid rollout becomes a state the next prompts can build on (TTT-Discover state reuse)."""
    return State(code=env.parse(r.text) or "", construction=r.result.construction, score=r.result.score,
                 value=r.result.value, parent_score=parent.score, stdout_tail=r.result.stdout_tail,
                 task_id=parent.task_id)


def _program(env, text: str) -> str | None:
    """The program a program task ran (what `ttt verify` scores again from best.json); None for other tasks."""
    from envs.program_env import ProgramEnv

    return env.parse(text) if isinstance(env, ProgramEnv) else None


def _best_of(rollouts: list[Rollout], best: dict | None) -> dict | None:
    valid = [r for r in rollouts if r.result.ok]
    if not valid:
        return None
    top = max(valid, key=lambda r: r.result.reward)  # first of equals: deterministic
    if best is not None and top.result.reward <= best["reward"]:
        return None
    return {"reward": top.result.reward, "score": top.result.score, "value": top.result.value,
            "construction": top.result.construction, "text": top.text, "parent_id": top.parent_id,
            "group": top.group}


def _datums(cfg: TrainConfig, rollouts: list[Rollout], rewards_G_K: np.ndarray,
            base) -> tuple[list, list[Rollout], dict]:
    """Constant groups carry no signal and are dropped (the last one is kept if all are, as TTT-Discover)."""
    G, K = rewards_G_K.shape
    mixed = [g for g in range(G) if not np.all(rewards_G_K[g] == rewards_G_K[g, 0])]
    stats = {"frac_mixed": len(mixed) / G}
    if cfg.mode == "expert_iteration":
        chosen = []
        for g in range(G):
            valid = [r for r in rollouts[g * K:(g + 1) * K] if r.result.ok]
            chosen += sorted(valid, key=lambda r: -r.result.reward)[:cfg.expert_top_k]
        stats["imitated"] = len(chosen)
        return [imitation_datum(r.prompt_tokens, r.tokens, r.mask) for r in chosen], chosen, stats
    keep = mixed or [G - 1]
    trained, advantages, betas = [], [], []
    for g in keep:
        advantages_K, beta = compute_advantages(rewards_G_K[g], cfg.advantage, cfg.advantage_beta)
        betas.append(beta)
        for r, a in zip(rollouts[g * K:(g + 1) * K], advantages_K):
            trained.append(r)
            advantages.append(np.full(len(r.tokens), float(a)))
    stats.update(M.beta_stats(betas))
    if base is not None:
        futures = [base.compute_logprobs(types.ModelInput.from_ints(r.prompt_tokens + r.tokens)) for r in trained]
        base_lps = [np.asarray(f.result()[len(r.prompt_tokens):], dtype=np.float64)
                    for f, r in zip(futures, trained)]
        advantages, stats["kl_sampler_base"] = fold_kl_penalty(
            advantages, [r.logprobs for r in trained], base_lps, [r.mask for r in trained], cfg.kl_coef)
    datums = [rollout_datum(r.prompt_tokens, r.tokens, r.logprobs, a.tolist(), r.mask)
              for r, a in zip(trained, advantages)]
    return datums, trained, stats


def _train(cfg: TrainConfig, training, datums: list, trained: list[Rollout], adam, step: int, version: int,
           log) -> dict:
    """One forward_backward + optim_step; the learner's logprobs of the sampled tokens must equal the
    sampler's (both losses return them), else the sampler was not serving adapter v`version`."""
    loss_fn = "cross_entropy" if cfg.mode == "expert_iteration" else cfg.loss_fn
    config = dict(cfg.loss_fn_config)
    if cfg.temperature != 1.0:  # the learner replays the sampling temperature (expert iteration imitates it too)
        config["temperature"] = cfg.temperature
    fb_future = training.forward_backward(datums, loss_fn, config or None)
    optim_future = training.optim_step(adam)  # queued behind forward_backward, as the SDK pipelines them
    fb, optim = fb_future.result(), optim_future.result()
    stats = {"trained": True, "loss": fb.metrics.get("loss:sum"), "datums": len(datums),
             "tokens_trained": int(sum(d.model_input.length for d in datums)),
             "grad_norm": (optim.metrics or {}).get("grad_norm:mean")}
    fresh = [r.version == version for r in trained]  # async: older samplers differ by the updates since
    if any(fresh):
        deltas = M.sampler_learner_deltas(fb, trained, fresh)
        stats["mismatch_mean"], stats["mismatch_max"] = float(deltas.mean()), float(deltas.max())
        _check(cfg, stats["mismatch_max"], f"step {step}: sampler and learner logprobs", version, log)
    if not all(fresh):  # how far the policy moved since those were sampled (the probe proves serving then)
        stats["stale_mismatch_mean"] = float(M.sampler_learner_deltas(fb, trained, [not f for f in fresh]).mean())
    return stats


def _probe_tokens(cfg, tokenizer, inst: Instance) -> list[int]:
    prompt = render_prompt(tokenizer, inst.env.prompt(inst.buffer.nodes[0].state), cfg.chat_template_kwargs)
    return prompt + tokenizer.encode(PROBE_TEXT, add_special_tokens=False)


def _check_probe(cfg, training, sampling, probe_tokens: list[int], version: int, log) -> float:
    """The proof of serving: the sampler's logprobs of a fixed probe equal the learner's."""
    served = sampling.compute_logprobs(types.ModelInput.from_ints(probe_tokens)).result()[1:]
    datum = types.Datum(model_input=types.ModelInput.from_ints(probe_tokens[:-1]), loss_fn_inputs={
        "target_tokens": probe_tokens[1:], "weights": [0.0] * (len(probe_tokens) - 1)})
    trained = training.forward([datum], "cross_entropy").result().loss_fn_outputs[0]["logprobs"].to_numpy()
    delta = float(np.abs(np.asarray(served, dtype=np.float64) - trained).max())
    _check(cfg, delta, f"after swapping to v{version}, probe logprobs of sampler and learner", version, log)
    return delta


def _check(cfg, delta: float, what: str, version: int, log) -> None:
    if delta <= cfg.mismatch_threshold:
        return
    message = (f"{what} differ by {delta:.2e} (> {cfg.mismatch_threshold:g}): "
               f"the sampler is not serving adapter v{version}")
    if cfg.on_mismatch == "stop":
        raise SamplerMismatch(message)
    log(f"warning: {message}")


def _loop_state(cfg, step, version, groups, best, curriculum, instances, training, rng_state, out,
                next_plan) -> dict:
    """`next_plan`: async, the next step's batch in flight (resumed with its parents and weights)."""
    state = {"step": step, "version": version, "groups": groups, "best": best, "rng": rng_state,
             "next_batch": next_plan.to_dict() if next_plan is not None else None,
             "curriculum": curriculum.to_dict(), "buffers": [i.buffer.to_dict() for i in instances],
             "base_model": cfg.base_model, "env": cfg.env, "env_name": cfg.env_name,
             "curriculum_overrides": list(cfg.curriculum), "training_state": None, "local_training_dir": None}
    if training is not None:
        path = training.save_state(f"step_{step:06d}").result().path
        state["training_state"] = path
        if cfg.backend == "local":
            from shim.checkpoint_paths import CheckpointStore

            state["local_training_dir"] = str(CheckpointStore(out / "tinker").parse(path).directory)
    return state
