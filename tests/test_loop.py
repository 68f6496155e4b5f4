"""The TTT loop end to end over the shim's client API: real vLLM + Ray + PEFT learner; the proof that the
sampler serves the trained adapter; every mode for 2 steps; the HF sampler path for machines without vLLM."""

import json

import pytest

from inference.hf_sampler import HFSampler
from trainer.checkpoint import read_checkpoint
from trainer.config import compose
from trainer.loop import SamplerMismatch, run
from trainer.report import read_jsonl

QUIET = {"log": lambda *_: None}


def tiny(tmp_path, *overrides):
    return compose(["+experiment=demo", f"out={tmp_path}", "wandb_mode=disabled", *overrides])


@pytest.mark.vllm
def test_loop_on_real_vllm_ray_and_peft(vllm_sampler, tmp_path):
    cfg = tiny(tmp_path, "steps=3", "groups=2", "group_size=4", "max_tokens=12", "wandb_mode=offline")
    records = run(cfg, sampler=vllm_sampler, **QUIET)
    on_disk = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in on_disk] == [0, 1, 2]
    assert on_disk == json.loads(json.dumps(records))
    assert [r["adapter_version"] for r in records] == [1, 2, 3]  # one optimizer step per step
    assert all(r["mismatch_max"] < 1e-4 and r["probe_mismatch"] < 1e-4 for r in records)  # vLLM serves it
    for r in records:
        assert r["tokens_sampled"] > 0 and r["tokens_trained"] > r["tokens_sampled"]  # prompts are trained too
        assert r["t_sample"] > 0 and r["t_swap"] > 0 and r["valid_rate"] + 1e-9 >= 0 and 0 <= r["frac_mixed"] <= 1
        assert r["buffer_size"] >= 2 and r["beta_mean"] > 0 and r["groups"] == 2
    assert (tmp_path / "learning_curve.png").stat().st_size > 10_000
    assert len(read_jsonl(tmp_path / "rollouts.jsonl")) == 3 * 2 * 4  # every evaluated rollout
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["reward"] == max(r["reward_max"] for r in records) == records[-1]["best_reward"]
    assert (tmp_path / "best.png").stat().st_size > 5_000  # the best construction, drawn through the real loop
    state = read_checkpoint(tmp_path)
    assert state["step"] == 2 and state["version"] == 3 and state["best"]["reward"] == best["reward"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == [
        "step_000000", "step_000001", "step_000002"]
    assert list((tmp_path / "wandb").glob("offline-run-*")), "wandb writes offline by default"


class _StaleHFSampler(HFSampler):
    """Keeps serving its first adapter: the silent staleness that peer frameworks suffer from."""

    def load_adapter(self, version, path):
        if self.version is None:
            super().load_adapter(version, path)
        else:
            self.version = version


def test_a_sampler_that_does_not_swap_is_caught(tiny_model_path, tmp_path):
    cfg = tiny(tmp_path, "steps=3", "groups=2", "group_size=4", "max_tokens=8", "learning_rate=1e-2",
               "sampler=hf", "verifier_backend=local")
    with pytest.raises(SamplerMismatch, match="after swapping to v1, probe logprobs .* not serving adapter v1"):
        run(cfg, sampler=_StaleHFSampler(tiny_model_path), **QUIET)
    assert len(read_jsonl(tmp_path / "rollouts.jsonl")) == 8  # the finished evaluations were kept


class _ProbeFooledSampler(HFSampler):
    """Answers the probe with the newest adapter but keeps sampling with its first one."""

    def __init__(self, model_path):
        super().__init__(model_path)
        self._stale = HFSampler(model_path)

    def load_adapter(self, version, path):
        super().load_adapter(version, path)
        if self._stale.version is None:
            self._stale.load_adapter(version, path)

    def sample(self, prompts_P, num_samples, params, seeds_P=None, version="current"):
        return self._stale.sample(prompts_P, num_samples, params, seeds_P=seeds_P)


def test_per_step_mismatch_is_caught_when_the_probe_is_fooled(tiny_model_path, tmp_path):
    cfg = tiny(tmp_path, "steps=3", "groups=2", "group_size=4", "max_tokens=8", "learning_rate=1e-2",
               "sampler=hf", "verifier_backend=local")
    with pytest.raises(SamplerMismatch, match="step 1: sampler and learner logprobs differ"):
        run(cfg, sampler=_ProbeFooledSampler(tiny_model_path), **QUIET)
    warned = []
    run(tiny(tmp_path / "warn", "steps=2", "groups=2", "group_size=4", "max_tokens=8", "learning_rate=1e-2",
             "sampler=hf", "verifier_backend=local", "on_mismatch=warn"),
        sampler=_ProbeFooledSampler(tiny_model_path), log=warned.append)
    assert any(str(w).startswith("warning: step 1: sampler and learner logprobs differ") for w in warned)


def test_loop_with_hf_sampler_and_local_verifier(tmp_path):
    records = run(tiny(tmp_path, "steps=2", "groups=2", "group_size=4", "max_tokens=8", "sampler=hf",
                       "verifier_backend=local"), **QUIET)
    assert [r["adapter_version"] for r in records] == [1, 2]
    assert all(r["mismatch_max"] < 1e-4 for r in records)


@pytest.mark.vllm
def test_demo_defaults_learn(vllm_sampler, tmp_path):
    """`ttt demo`'s config (same seeds, same engine settings): mean reward visibly rises. One step's mean of 32
    samples moves by ~0.05 from step to step and dips by 0.1 happen (seeds 0-2: 0.87 -> 0.95, 0.89 -> 1.05,
    0.86 -> 1.11 first to last step), so the first and last three steps are compared."""
    records = run(tiny(tmp_path), sampler=vllm_sampler, **QUIET)
    rewards = [r["reward_mean"] for r in records]
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.07, [round(r, 3) for r in rewards]
    assert records[-1]["valid_rate"] == 1.0


# ---- every mode runs 2 steps on the tiny model (real vLLM, Ray, PEFT) ---------------------------------------

@pytest.mark.vllm
def test_frozen_samples_and_reuses_states_without_updates(vllm_sampler, tmp_path):
    records = run(tiny(tmp_path, "mode=frozen", "steps=2", "groups=2", "group_size=4"), sampler=vllm_sampler,
                  **QUIET)
    assert [r["adapter_version"] for r in records] == [0, 0]
    assert all("loss" not in r and r["tokens_trained"] == 0 for r in records)
    assert records[1]["buffer_size"] > records[0]["buffer_size"] - 1  # children enter the PUCT buffer
    assert read_checkpoint(tmp_path)["training_state"] is None


@pytest.mark.vllm
def test_best_of_n_keeps_sampling_the_initial_state(vllm_sampler, tmp_path):
    records = run(tiny(tmp_path, "mode=best_of_n", "steps=2", "groups=2", "group_size=4"), sampler=vllm_sampler,
                  **QUIET)
    rollouts = read_jsonl(tmp_path / "rollouts.jsonl")
    parents = {r["parent_id"] for r in rollouts}
    initial = {n["id"] for n in read_checkpoint(tmp_path)["buffers"][0]["nodes"] if n["is_initial"]}
    assert parents <= initial  # no state reuse
    assert records[-1]["best_reward"] == max(r["reward"] for r in rollouts)


@pytest.mark.vllm
def test_expert_iteration_imitates_the_best_verified_rollouts(vllm_sampler, tmp_path):
    records = run(tiny(tmp_path, "mode=expert_iteration", "steps=2", "groups=2", "group_size=4",
                       "expert_top_k=2"), sampler=vllm_sampler, **QUIET)
    for r in records:
        assert r["imitated"] == 4 and r["datums"] == 4 and r["loss"] > 0  # cross_entropy: -sum logp > 0
        assert r["mismatch_max"] < 1e-4
    assert [r["adapter_version"] for r in records] == [1, 2]


@pytest.mark.vllm
def test_curriculum_moves_to_the_next_instance_and_tracks_each(vllm_sampler, tmp_path):
    records = run(tiny(tmp_path, "steps=2", "groups=2", "group_size=4", "curriculum=[{length: 6},{length: 12}]",
                       "promote_valid_rate=0.1"), sampler=vllm_sampler, **QUIET)
    assert [r["instance"] for r in records] == [0, 1] and records[0]["promoted"]
    rollouts = read_jsonl(tmp_path / "rollouts.jsonl")
    assert {len(r["construction"]) for r in rollouts if r["status"] == "ok" and r["instance"] == 0} <= {6}
    stats = read_checkpoint(tmp_path)["curriculum"]["stats"]
    assert stats[0]["promoted_at_step"] == 0 and stats[0]["rollouts"] == 8 and stats[1]["rollouts"] == 8


@pytest.mark.vllm
def test_adaptive_batch_follows_the_valid_rate(vllm_sampler, tmp_path):
    # the toy task is always valid (rate 1.0): groups -> round(4 * 0.25 / 1.0) = 1, clipped to min_groups 2
    records = run(tiny(tmp_path, "steps=2", "groups=4", "group_size=4", "adaptive_batch=true",
                       "target_valid_rate=0.25", "min_groups=2"), sampler=vllm_sampler, **QUIET)
    assert [r["groups"] for r in records] == [4, 2]
    assert len(read_jsonl(tmp_path / "rollouts.jsonl")) == 4 * 4 + 2 * 4


@pytest.mark.vllm
def test_kl_penalty_uses_base_model_logprobs(vllm_sampler, tmp_path):
    records = run(tiny(tmp_path, "steps=2", "groups=2", "group_size=4", "kl_coef=0.1"), sampler=vllm_sampler,
                  **QUIET)
    assert records[0]["kl_sampler_base"] == pytest.approx(0.0, abs=1e-4)  # v0 has B = 0: it is the base model
    assert abs(records[1]["kl_sampler_base"]) > 1e-4  # after one step the policy has moved


def test_two_phase_budget_over_the_client_api(tmp_path):
    """Sequences that hit the thinking budget get the forced prefill and a final phase; the prefill is not
    trained (mask 0), so the sampler-learner check still holds on the chosen tokens."""
    records = run(tiny(tmp_path, "steps=2", "groups=2", "group_size=4", "sampler=hf", "verifier_backend=local",
                       "thinking_budget=6", "final_budget=5", "prefill_text=' ... final answer:'"), **QUIET)
    from transformers import AutoTokenizer

    from inference.models import resolve_model

    prefill = len(AutoTokenizer.from_pretrained(resolve_model("tiny")).encode(" ... final answer:",
                                                                             add_special_tokens=False))
    for r in records:
        assert r["mismatch_max"] < 1e-4
        # every sequence ran out of its 6 thinking tokens (the tiny model rarely stops) and got prefill + final
        assert 8 * 6 < r["tokens_sampled"] <= 8 * (6 + prefill + 5)
