"""How one step's phases overlap (cfg.pipeline); the loop (trainer/loop.py) tells the step's story, this
module runs its rollouts from sampling to the last evaluation.

    sync    sample all G x K, then verify them all: the paper's order, kept for exact reproduction.
    stream  each sequence is its own request and goes to the verifier pool the moment it ends (both phases of
            two-phase sampling done), so verification overlaps sampling; each group goes to the learner
            (forward_backward) the moment its own last evaluation ends, so only the last group's and
            optim_step remain after it (gradients accumulate and the loss is a sum: the same update). A
            group's sequence k is asked for with the seed group seed + k, which is what the group request of
            sync samples on our backends (vLLM's rule for n > 1, followed by our HF sampler; the sampling pool
            batches the single requests and encodes a prompt once): the same tokens, rewards and run as sync.
    async   as stream, and the next step's batch starts sampling as soon as this step's sampling ends (or,
            with prefetch_at < 1, once that share of its sequences has ended), while this step verifies and
            trains. Its rollouts come from the adapter one version behind the one they
            are trained at (staleness 1); the importance-sampling loss divides by the sampler's logprobs, so it
            stays correct, and every rollout records the version that sampled it.

A Batch is one step's rollouts in flight. Its Plan (step, instance, parent nodes, the sampling adapter's
version and durable path) is fixed when it starts, so a checkpoint taken while it is in flight can restart it
exactly: the same parents and seeds, sampled by the same weights (async serves every version from
save_weights_for_sampler, whose path outlives the process), and every evaluation that had finished is taken
from rollouts.jsonl rather than redone.
"""

from __future__ import annotations

import math
import shutil
import threading
from concurrent.futures import Future, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinker import types

from envs.base import VerifyResult
from trainer import metrics as M
from trainer.checkpoint import RolloutLog
from trainer.rollouts import (Rollout, finish_sequence, group_seed, request_sequence, sample_groups, state_prompt,
                              unverifiable)
from trainer.state_sampler import Node


@dataclass
class Served:
    """The sampling client new batches sample with, the adapter version it serves, and (async) the durable
    tinker:// path of its weights."""
    client: Any
    version: int
    path: str | None = None


@dataclass
class Plan:
    """What a step samples, fixed when its batch starts; saved with a checkpoint while the batch is in flight."""
    step: int
    instance: int
    parents: list[Node]  # one per group, as selected (a parent may leave the buffer before its rollouts land)
    version: int
    sampler_path: str | None

    def to_dict(self) -> dict:
        return {"step": self.step, "instance": self.instance, "parents": [p.to_dict() for p in self.parents],
                "version": self.version, "sampler_path": self.sampler_path}

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        return cls(d["step"], d["instance"], [Node.from_dict(p) for p in d["parents"]], d["version"],
                   d["sampler_path"])


class Pipeline:
    """Starts batches and keeps what they share: the sampling parameters, the rollout log, the next batch."""

    def __init__(self, cfg, tokenizer, log: RolloutLog, out: Path):
        self.cfg, self.tokenizer, self.log, self.out = cfg, tokenizer, log, out
        self.params = types.SamplingParams(max_tokens=cfg.max_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                           stop=list(cfg.stop) or None)  # None: the model's end-of-turn token
        self.prefill = tokenizer.encode(cfg.prefill_text, add_special_tokens=False)
        self.log_lock = threading.Lock()  # groups and verifier pools append from their own threads
        self.ahead: Batch | None = None  # async: the next step's batch, already sampling
        self._durable: list[str] = []  # async: sampler weights saved by this process, oldest first

    @property
    def prefetches(self) -> bool:
        return self.cfg.pipeline == "async" and self.cfg.max_steps_off_policy >= 1

    def serve(self, service, training, version: int) -> Served:
        """A sampling client for the learner's current weights. async: from a named save, so that a resumed
        run can sample an in-flight step with these weights again (the newest few are kept on local disk)."""
        if training is None:  # frozen / best_of_n: the base model
            return Served(service.create_sampling_client(base_model=self.cfg.base_model).result(), version)
        if self.cfg.pipeline != "async":
            return Served(training.save_weights_and_get_sampling_client().result(), version)
        path = training.save_weights_for_sampler(f"sampler_v{version:06d}").result().path
        self._durable.append(path)
        while len(self._durable) > self.cfg.save_every + 2:  # the latest checkpoint's plan needs one of these
            self._forget(self._durable.pop(0))
        return Served(service.create_sampling_client(model_path=path).result(), version, path)

    def served_for(self, plan: Plan, served: Served, service) -> Served:
        """The client that sampled `plan` (a resumed in-flight batch: its own weights, not the newest)."""
        if plan.version == served.version or plan.sampler_path is None:
            return served
        return Served(service.create_sampling_client(model_path=plan.sampler_path).result(), plan.version,
                      plan.sampler_path)

    def start(self, plan: Plan, inst, served: Served) -> "Batch":
        return Batch(self, plan, inst, served.client)

    def take(self, step: int) -> "Batch | None":
        """The prefetched batch of `step`, if there is one."""
        batch, self.ahead = self.ahead, None
        return batch if batch is not None and batch.plan.step == step else None

    def append(self, r: Rollout, plan: Plan, result: VerifyResult) -> None:
        with self.log_lock:
            self.log.append(plan.step, r.index, r.group, r.parent_id, plan.instance, r.text, result,
                            version=r.version)

    def _forget(self, path: str) -> None:
        if self.cfg.backend == "local":
            from shim.checkpoint_paths import CheckpointStore

            shutil.rmtree(CheckpointStore(self.out / "tinker").parse(path).directory, ignore_errors=True)


class Batch:
    """One step's G x K rollouts, from sampling to the last evaluation."""

    def __init__(self, pipe: Pipeline, plan: Plan, inst, client):
        self.pipe, self.plan, self.inst, self.client = pipe, plan, inst, client
        cfg = pipe.cfg
        self.prompts_G = [state_prompt(pipe.tokenizer, inst.env, node.state, cfg.chat_template_kwargs)
                          for node in plan.parents]
        self.seeds_G = [group_seed(cfg.seed, plan.step, g) for g in range(len(plan.parents))]
        self.rollouts: list[Rollout] = []
        self._ended = 0  # sequences sampled (or failed) so far
        self._ended_changed = threading.Condition()
        self._sequences: list[Future] | None = None
        if cfg.pipeline != "sync":  # every sequence samples and goes to the verifier on its own thread
            # the requests go out now, in one burst from this thread, so the engine batches them the same way
            # in every run (threads starting on a loaded machine would trickle them in)
            requested = [(g, k, request_sequence(client, self.prompts_G[g], k, pipe.params, self.seeds_G[g],
                                                 thinking_budget=cfg.thinking_budget))
                         for g in range(len(plan.parents)) for k in range(cfg.group_size)]
            self._sequences = [_in_thread(self._sample_and_verify, g, k, future) for g, k, future in requested]

    def sampled(self) -> list[Rollout]:
        """Wait until every sequence is sampled (sync: sample them now); rollouts in group order."""
        cfg = self.pipe.cfg
        G = len(self.plan.parents)
        if self._sequences is None:
            with M.progress(cfg.progress and G >= 8, G, f"sample step {self.plan.step}") as bar:
                sampled_G = sample_groups(self.client, self.prompts_G, cfg.group_size, self.pipe.params,
                                          self.seeds_G, self.pipe.tokenizer, thinking_budget=cfg.thinking_budget,
                                          final_budget=cfg.final_budget, prefill_tokens=self.pipe.prefill,
                                          progress=bar)
            self.rollouts = [self._rollout(g, k, seq) for g, seqs in enumerate(sampled_G)
                             for k, seq in enumerate(seqs)]
            return self.rollouts
        with M.progress(cfg.progress and G >= 8, len(self._sequences), f"sample step {self.plan.step}") as bar:
            for future in self._sequences:
                self.rollouts.append(future.result()[0])
                if bar is not None:
                    bar.update(1)
        return self.rollouts

    def wait_sampled(self, share: float) -> None:
        """Wait until `share` of the sequences have ended (sync: nothing is in flight; sampled() samples)."""
        if self._sequences is None:
            return
        need = math.ceil(share * len(self._sequences))
        with self._ended_changed:
            self._ended_changed.wait_for(lambda: self._ended >= need)

    def groups_verified(self):
        """Yield (g, group g's rollouts) the moment the group's last evaluation ends (sync: verify them all
        now, then every group in order)."""
        K, G = self.pipe.cfg.group_size, len(self.plan.parents)
        if self._sequences is None:
            self._verify_all()
            for g in range(G):
                yield g, self.rollouts[g * K:(g + 1) * K]
            return
        left, evaluations = [K] * G, {}
        for future in self._sequences:
            r, evaluation = future.result()
            if evaluation is None:  # known from the log, or nothing to verify
                left[r.group] -= 1
            else:
                evaluations[evaluation] = r
        for g in range(G):
            if left[g] == 0:
                yield g, self.rollouts[g * K:(g + 1) * K]
        for evaluation in as_completed(evaluations):
            r = evaluations[evaluation]
            r.result = evaluation.result()
            left[r.group] -= 1
            if left[r.group] == 0:
                yield r.group, self.rollouts[r.group * K:(r.group + 1) * K]

    # ---- the pieces ----
    def _rollout(self, g: int, k: int, seq: dict) -> Rollout:
        return Rollout(group=g, index=g * self.pipe.cfg.group_size + k, parent_id=self.plan.parents[g].id,
                       prompt_tokens=self.prompts_G[g], version=self.plan.version, **seq)

    def _sample_and_verify(self, g: int, k: int, requested) -> tuple[Rollout, Future | None]:
        cfg = self.pipe.cfg
        try:
            seq = finish_sequence(self.client, requested, self.prompts_G[g], k, self.pipe.params, self.seeds_G[g],
                                  self.pipe.tokenizer, thinking_budget=cfg.thinking_budget,
                                  final_budget=cfg.final_budget, prefill_tokens=self.pipe.prefill)
        finally:  # a failed request counts as ended: its error surfaces in sampled()
            with self._ended_changed:
                self._ended += 1
                self._ended_changed.notify_all()
        r = self._rollout(g, k, seq)
        return r, self._submit(r)

    def _known(self, r: Rollout) -> bool:
        """A result from the log (a resumed step) or a rollout with no answer to verify (logged now)."""
        with self.pipe.log_lock:
            r.result = self.pipe.log.lookup(self.plan.step, r.index, r.text)
        if r.result is None:
            r.result = unverifiable(r, self.inst.env.needs_complete_answer)
            if r.result is not None:  # logged like any evaluation, so a resumed step takes it from the log
                self.pipe.append(r, self.plan, r.result)
        return r.result is not None

    def _submit(self, r: Rollout) -> Future | None:
        if self._known(r):
            return None
        state = self.plan.parents[r.group].state
        return self.inst.pool.submit(r.text, state, lambda result: self.pipe.append(r, self.plan, result))

    def _verify_all(self) -> None:
        todo = [r for r in self.rollouts if not self._known(r)]
        states = [self.plan.parents[r.group].state for r in todo]
        results = self.inst.pool.evaluate([r.text for r in todo], states,
                                          on_result=lambda i, result: self.pipe.append(todo[i], self.plan, result))
        for r, result in zip(todo, results):
            r.result = result


def _in_thread(fn, *args) -> Future:
    """fn(*args) on a daemon thread (a batch abandoned at preemption must not hold the process open)."""
    future: Future = Future()

    def run():
        try:
            future.set_result(fn(*args))
        except BaseException as e:
            future.set_exception(e)

    threading.Thread(target=run, daemon=True, name="sample-sequence").start()
    return future
