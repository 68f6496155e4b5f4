"""`ttt eval`: offline evaluation of a saved adapter on real vLLM, with every rollout kept."""

import json

import pytest

from trainer.evaluate import EvalConfig, evaluate
from trainer.config import compose
from trainer.loop import run
from trainer.report import read_jsonl


@pytest.mark.vllm
def test_eval_of_a_saved_adapter_and_of_the_base_model(vllm_sampler, tmp_path):
    records = run(compose(["+experiment=demo", f"out={tmp_path / 'run'}", "steps=2", "groups=2", "group_size=4",
                           "wandb_mode=disabled"]), sampler=vllm_sampler, log=lambda *_: None)
    summary = evaluate(EvalConfig(checkpoint=str(tmp_path / "run"), n=16, out=str(tmp_path / "eval")),
                       sampler=vllm_sampler)
    # the run's best, verified again from its text and parent state: the same best as the run reported
    assert summary["run_best"]["reward"] == records[-1]["best_reward"] and summary["run_best"]["status"] == "ok"
    assert summary["adapter"].endswith("step_000001/adapter")
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
    with pytest.raises(ValueError, match="neither a run checkpoint nor a PEFT adapter dir"):
        evaluate(EvalConfig(checkpoint=str(tmp_path), out=str(tmp_path / "eval")))
