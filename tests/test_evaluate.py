"""`ttt eval`: offline evaluation of a saved adapter on real vLLM, with every rollout kept."""

import json

import pytest

from trainer.evaluate import EvalConfig, evaluate
from trainer.loop import LoopConfig, run
from trainer.report import read_jsonl


@pytest.mark.vllm
def test_eval_of_a_saved_adapter_and_of_the_base_model(vllm_sampler, tmp_path):
    run(LoopConfig(out=str(tmp_path / "run"), steps=2, groups=2, group_size=4), sampler=vllm_sampler,
        log=lambda *_: None)
    adapter = tmp_path / "run" / "adapters" / "v2"
    summary = evaluate(EvalConfig(checkpoint=str(adapter), n=16, out=str(tmp_path / "eval")), sampler=vllm_sampler)
    rollouts = read_jsonl(tmp_path / "eval" / "rollouts.jsonl")
    assert len(rollouts) == 16 and summary["n"] == 16
    assert summary["reward_best"] == max(r["reward"] for r in rollouts)
    assert summary["valid_rate"] == sum(r["status"] == "ok" for r in rollouts) / 16
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["reward_mean"] == summary["reward_mean"]
    if summary["best_construction"] is not None:
        assert (tmp_path / "eval" / "best.png").stat().st_size > 5_000
    base = evaluate(EvalConfig(n=16, out=str(tmp_path / "base")), sampler=vllm_sampler)
    base_texts = [r["text"] for r in read_jsonl(tmp_path / "base" / "rollouts.jsonl")]
    assert base_texts != [r["text"] for r in rollouts] and base["checkpoint"] is None


def test_eval_refuses_a_dir_that_is_not_an_adapter(tmp_path):
    with pytest.raises(ValueError, match="is not a PEFT adapter dir"):
        evaluate(EvalConfig(checkpoint=str(tmp_path), out=str(tmp_path / "eval")))
