"""The TTT-Discover loop, top to bottom, over the Tinker-shaped client API (our GPUs or Tinker's cloud):

  select states (PUCT) -> prompts -> sample G groups of K -> sandboxed verification on Ray -> rewards ->
  advantages (+ KL-to-base shaping) -> datums -> forward_backward(importance_sampling) -> optim_step ->
  new sampler version, proved on a probe -> buffer update -> metrics -> checkpoint.

Modes: train; frozen (same sampling and PUCT, no updates); best_of_n (no updates, no state reuse);
expert_iteration (cross_entropy on the best verified rollouts of each group). The output of a run is the best
state ever seen (out/best.json, out/best.png), not the policy.

Where the pieces live: run_setup.py (task instances, the service), pipeline.py (a step's rollouts from sampling
to the last evaluation: sync | stream | async), update.py (datums, the optimizer step and its proof of
serving), run_state.py (what a checkpoint holds, SIGTERM).
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from tinker import types

from envs.base import State
from envs.sandbox.isolation import describe as describe_isolation
from trainer import distributed, init_adapter, rank_sync, report, run_setup, run_state, update
from trainer import metrics as M
from trainer.checkpoint import Checkpoints, RolloutLog, restore_rng, rng_states, truncate_metrics
from trainer.config import TrainConfig, to_dict
from trainer.curriculum import Curriculum, next_groups
from trainer.pipeline import Pipeline, Plan
from trainer.rollouts import Rollout
from trainer.run_state import Preempted  # noqa: F401  (what `ttt train` reports as exit 143)
from trainer.state_sampler import StateSampler
from trainer.update import SamplerMismatch  # noqa: F401  (the run's stop when the sampler is not serving)


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
        instances = [run_setup.instance(cfg, overrides, stack) for overrides in curriculum.overrides]
        for level in sorted({inst.pool.isolation for inst in instances} - {None}):  # None: runs no program
            log(describe_isolation(level))
        if service is None:
            service = run_setup.service(cfg, sampler, out, stack)
        stop = run_state.preemption_flag(stack)
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
    kl_reference, kl_reference_path = run_setup.kl_reference(cfg, service, training, saved)

    start = 0
    for inst in instances:
        inst.buffer.add_initial(run_setup.initial_states(inst.env, cfg.groups, rng))
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
        probe_tokens = update.probe_tokens(cfg, tokenizer, instances[0])
        update.check_probe(cfg, training, served.client, probe_tokens, version, log)

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
        if pipe.prefetches and step + 1 < cfg.steps:  # async: step+1 samples while this step verifies and trains
            batch.wait_sampled(cfg.prefetch_at)  # (prefetch_at < 1: and while this step's stragglers decode)
            pipe.ahead = begin(step + 1)
        rollouts = batch.sampled()
        t1 = time.perf_counter()

        def previous_step_state():  # nothing below mutates the run until the buffer update (4.)
            return run_state.loop_state(cfg, step - 1, version, groups, best, curriculum, instances, training,
                                        step_rng_state, out, prefetched.plan if prefetched else None,
                                        kl_reference_path)
        run_state.raise_if(stop, cfg, checkpoints, step - 1, previous_step_state)

        # 3. the last evaluations end (sync: all start now); each is logged as it finishes, logged ones not redone.
        #    stream/async: each group goes to the learner (forward_backward) the moment its last evaluation ends
        step_update = (update.StepUpdate(cfg, training, kl_reference, len(plan.parents),
                                         early=cfg.pipeline != "sync") if cfg.trains else None)
        for g, rollouts_K in batch.groups_verified():
            if step_update is not None:
                step_update.add_group(g, rollouts_K)
        rewards_G_K = np.array([r.result.reward for r in rollouts]).reshape(len(plan.parents), cfg.group_size)
        t2 = time.perf_counter()
        run_state.raise_if(stop, cfg, checkpoints, step - 1, previous_step_state)

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
        if cfg.trains:  # the step's last datums, one optimizer step, the proof that the sampler served it
            train_stats.update(step_update.finish(step, version, adam, log))
            if train_stats.get("trained"):
                version += 1
        t3 = time.perf_counter()
        if cfg.trains and train_stats.get("trained"):
            served = pipe.serve(service, training, version)
            if cfg.probe_every_swap:
                probe_tokens = probe_tokens or update.probe_tokens(cfg, tokenizer, instances[0])
                train_stats["probe_mismatch"] = update.check_probe(cfg, training, served.client, probe_tokens,
                                                                   version, log)
        t4 = time.perf_counter()

        # 6. metrics, curriculum, batch size, checkpoint
        record = M.step_record(step, rollouts, rewards_G_K, inst.buffer, best, version, len(plan.parents),
                               plan.instance, train_stats,
                               {"t_sample": t1 - t0, "t_verify": t2 - t1, "t_buffer": t2b - t2, "t_train": t3 - t2b,
                                "t_swap": t4 - t3}, isolation=inst.pool.isolation)
        n_valid = sum(r.result.ok for r in rollouts)
        # async: a step chosen before a promotion still ran on the previous instance; it does not count for the new
        record["promoted"] = plan.instance == curriculum.current and curriculum.record_step(
            step, n_valid, len(rollouts), float(rewards_G_K.sum()), float(rewards_G_K.max()))
        if cfg.adaptive_batch:
            groups = next_groups(groups, record["valid_rate"], cfg.target_valid_rate, cfg.min_groups,
                                 cfg.max_groups, len(rollouts))
        t5 = time.perf_counter()
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps or stop["set"]:
            checkpoints.write(step, run_state.loop_state(cfg, step, version, groups, best, curriculum, instances,
                                                         training, rng_states(rng), out,
                                                         pipe.ahead.plan if pipe.ahead else None, kl_reference_path),
                              record)  # its line, should the run end before it is appended
        record["t_checkpoint"] = time.perf_counter() - t5
        record["t_step"] = time.perf_counter() - t0
        records.append(record)
        M.append_record(out, record)
        wandb.log(record)
        log(report.table_row(record))
        if stop["set"]:
            raise run_state.Preempted(f"SIGTERM: stopped after step {step}, checkpointed; rerun with resume=true")

    M.finish(out, records, best, instances[curriculum.current].env, cfg)
    return records


# ---- the pieces, in the order the loop uses them ----------------------------------------------------------

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


