"""The RL loop end to end: real vLLM + Ray + PEFT learner; the proof that the sampler serves the trained
adapter; the HF sampler path for machines without vLLM."""

import json

import pytest

from inference.hf_sampler import HFSampler
from trainer.loop import LoopConfig, SamplerMismatch, run
from trainer.report import read_jsonl


@pytest.mark.vllm
def test_loop_on_real_vllm_ray_and_peft(vllm_sampler, tmp_path):
    cfg = LoopConfig(out=str(tmp_path), steps=3, groups=2, group_size=4, max_tokens=12)
    records = run(cfg, sampler=vllm_sampler, log=lambda *_: None)
    on_disk = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in on_disk] == [0, 1, 2]
    assert on_disk == json.loads(json.dumps(records))
    assert [r["adapter_version"] for r in records] == [0, 1, 2]  # step k samples with adapter v_k
    assert all(r["mismatch_max"] < 1e-4 for r in records)  # vLLM serves exactly what the learner trained
    assert all(r["tokens_sampled"] > 0 and r["t_sample"] > 0 and r["t_swap"] > 0 for r in records)
    assert (tmp_path / "learning_curve.png").stat().st_size > 10_000
    assert sorted(p.name for p in (tmp_path / "adapters").iterdir()) == ["v2", "v3"]


class _StaleHFSampler(HFSampler):
    """Keeps serving its first adapter: the silent staleness that peer frameworks suffer from."""

    def load_adapter(self, version, path):
        if self.version is None:
            super().load_adapter(version, path)
        else:
            self.version = version


def test_a_sampler_that_does_not_swap_is_caught(tiny_model_path, tmp_path):
    cfg = LoopConfig(out=str(tmp_path), steps=3, groups=2, group_size=4, max_tokens=8, learning_rate=1e-2,
                     sampler="hf", verifier_backend="local")
    with pytest.raises(SamplerMismatch, match="after swapping to v1, probe logprobs .* not serving adapter v1"):
        run(cfg, sampler=_StaleHFSampler(tiny_model_path), log=lambda *_: None)
    assert len(read_jsonl(tmp_path / "metrics.jsonl")) == 1  # the completed step was kept


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
        groups = self._stale.sample(prompts_P, num_samples, params, seeds_P=seeds_P)
        for seq in (s for group in groups for s in group):
            seq.adapter_version = self.version  # it claims the new version
        return groups


def test_per_step_mismatch_is_caught_when_the_probe_is_fooled(tiny_model_path, tmp_path):
    cfg = LoopConfig(out=str(tmp_path), steps=3, groups=2, group_size=4, max_tokens=8, learning_rate=1e-2,
                     sampler="hf", verifier_backend="local")
    with pytest.raises(SamplerMismatch, match="step 1: sampler and learner logprobs differ"):
        run(cfg, sampler=_ProbeFooledSampler(tiny_model_path), log=lambda *_: None)


def test_loop_with_hf_sampler_and_local_verifier(tmp_path):
    cfg = LoopConfig(out=str(tmp_path), steps=2, groups=2, group_size=4, max_tokens=8, sampler="hf",
                     verifier_backend="local")
    records = run(cfg, log=lambda *_: None)
    assert [r["adapter_version"] for r in records] == [0, 1]
    assert all(r["mismatch_max"] < 1e-4 for r in records)


@pytest.mark.vllm
def test_demo_defaults_learn(vllm_sampler, tmp_path):
    """`ttt demo`'s default config (same seeds, same engine settings): mean reward visibly rises."""
    records = run(LoopConfig(out=str(tmp_path)), sampler=vllm_sampler, log=lambda *_: None)
    first, last = records[0]["reward_mean"], records[-1]["reward_mean"]
    assert last > first + 0.1, [round(r["reward_mean"], 3) for r in records]
    assert records[-1]["valid_rate"] == 1.0


class _NoSwapVLLM:
    """Wraps the real engine but never loads adapters after the first, while claiming the new version."""

    def __init__(self, inner):
        self.inner, self.version = inner, None

    def load_adapter(self, version, path):
        if self.version is None:
            self.inner.load_adapter(version, path)
        self.version = version

    def sample(self, prompts_P, num_samples, params, seeds_P=None, version="current"):
        groups = self.inner.sample(prompts_P, num_samples, params, seeds_P=seeds_P)
        for seq in (s for g in groups for s in g):
            seq.adapter_version = self.version
        return groups

    def compute_logprobs(self, tokens_T, version="current"):
        return self.inner.compute_logprobs(tokens_T)

    def get_tokenizer(self):
        return self.inner.get_tokenizer()


@pytest.mark.vllm
def test_an_unswapped_vllm_adapter_is_caught(vllm_sampler, tmp_path):
    cfg = LoopConfig(out=str(tmp_path), steps=3, groups=2, group_size=4, max_tokens=8, learning_rate=1e-2)
    with pytest.raises(SamplerMismatch, match="after swapping to v1, probe logprobs"):
        run(cfg, sampler=_NoSwapVLLM(vllm_sampler), log=lambda *_: None)
    cfg.on_mismatch = "warn"
    warnings = []
    records = run(cfg, sampler=_NoSwapVLLM(vllm_sampler), log=warnings.append)
    assert len(records) == 3 and records[1]["mismatch_max"] > 1e-3
    assert any(str(w).startswith("warning: step 1: sampler and learner logprobs differ") for w in warnings)
