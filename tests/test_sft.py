"""`ttt sft` then RL: SFT on chat demonstrations over the client API lowers the loss and raises the logprob of
the demonstrated answers; only answer tokens are trained; bad input is one line naming the line and the fix;
`ttt train init_adapter=...` serves the SFT adapter at step 0 (real vLLM), and such a run resumes exactly.

Real components: the PEFT learner, the HF sampler and vLLM, `ttt sft` as a subprocess; the embedded tiny model.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tinker import types

from shim.factory import make_engine, make_service_client
from shim.local_client import LocalTrainingClient
from tests.run_compare import assert_same_records
from trainer.checkpoint import read_checkpoint
from trainer.config import compose
from trainer.datums import imitation_datum
from trainer.loop import run
from trainer.report import read_jsonl
from trainer.sft import SFTConfig, run_sft
from trainer.sft_data import demonstration

TTT = str(Path(sys.executable).with_name("ttt"))
QUIET = {"log": lambda *_: None}
SYSTEM = "You write digits."
DEMOS = [("write a flat step function of 12 digits", "5 5 5 5 5 5 5 5 5 5 5 5"),
         ("list twelve digits", "1 2 3 4 5 6 7 8 9 8 7 6"),
         ("what is 12 + 30", "12 + 30 = 42"),
         ("write the best sequence", "3 3 4 4 5 5 5 5 4 4 3 3"),
         ("add one and one", "1 + 1 = 2")]
SFT_ARGS = {"lora_rank": 8, "epochs": 8, "batch_size": 5, "learning_rate": 3e-3, "seed": 1}


def _conversation(user: str, answer: str) -> dict:
    return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user},
                         {"role": "assistant", "content": answer}]}


def _write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def _answer_logprob(sampling, demo) -> float:
    """The sampler's logprob of the demonstrated answer after its prompt (compute_logprobs)."""
    lps = sampling.compute_logprobs(types.ModelInput.from_ints(demo.prompt_tokens + demo.answer_tokens)).result()
    return float(sum(lps[len(demo.prompt_tokens):]))


def _tiny_service(checkpoint_dir: Path, sampler=None):
    engine = make_engine("tiny", sampler=sampler, sampler_kind="hf", checkpoint_dir=str(checkpoint_dir),
                         max_lora_rank=8)
    return make_service_client("local", engine=engine)


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    """One SFT run on the tiny model; the logprobs of each demonstrated answer before and after."""
    root = tmp_path_factory.mktemp("sft")
    data = _write_jsonl(root / "data.jsonl", [_conversation(u, a) for u, a in DEMOS])
    cfg = SFTConfig(data=str(data), out=str(root / "out"), **SFT_ARGS)
    service = _tiny_service(root / "out" / "tinker")
    summary = run_sft(cfg, service=service, **QUIET)
    tokenizer = service.create_sampling_client(base_model="tiny").get_tokenizer()
    demos = [demonstration(tokenizer, data, n, _conversation(u, a)["messages"], 512)
             for n, (u, a) in enumerate(DEMOS, 1)]
    base = service.create_sampling_client(base_model="tiny")
    tuned = service.create_sampling_client(model_path=summary["sampler_path"])
    before = [_answer_logprob(base, d) for d in demos]
    after = [_answer_logprob(tuned, d) for d in demos]
    yield {"cfg": cfg, "summary": summary, "demos": demos, "before": before, "after": after,
           "tuned_lps": [tuned.compute_logprobs(types.ModelInput.from_ints(d.prompt_tokens + d.answer_tokens))
                         .result()[1:] for d in demos]}
    service.close()


def test_sft_lowers_the_loss_and_raises_the_answer_logprob(sft):
    summary, out = sft["summary"], Path(sft["cfg"].out)
    print(f"loss {summary['loss_before']:.3f} -> {summary['loss_after']:.3f}; answer logprob "
          f"{np.mean(sft['before']):.2f} -> {np.mean(sft['after']):.2f} (mean over {len(DEMOS)} demonstrations)")
    assert summary["loss_after"] < 0.5 * summary["loss_before"]
    epochs = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in epochs] == list(range(1, SFT_ARGS["epochs"] + 1))
    assert epochs[-1]["loss"] < epochs[0]["loss"] == pytest.approx(summary["loss_before"], rel=1e-5)
    assert all(r["steps"] == 1 and r["answer_tokens"] == summary["answer_tokens"] for r in epochs)
    # every demonstrated answer became more likely, and the total matches the loss drop
    assert all(a > b + 5 for a, b in zip(sft["after"], sft["before"])), (sft["before"], sft["after"])
    assert -sum(sft["after"]) / summary["answer_tokens"] == pytest.approx(summary["loss_after"], rel=1e-3)
    on_disk = json.loads((out / "adapter.json").read_text())
    assert on_disk["state_path"].startswith("tinker://") and on_disk["state_path"].endswith("/weights/sft")
    assert (out / on_disk["local_state_dir"] / "state.safetensors").is_file()
    assert (out / on_disk["local_adapter_dir"] / "adapter_model.safetensors").is_file()


def test_only_the_final_answer_and_its_end_of_turn_token_are_trained(tiny_model_path, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "write digits"},
                {"role": "assistant", "content": "1 2"}, {"role": "user", "content": "again"},
                {"role": "assistant", "content": "5 5 5"}]
    demo = demonstration(tokenizer, "data.jsonl", 1, messages, 512)
    # by hand: the ChatML prompt up to the generation prompt, then the answer and <|im_end|> (not the newline)
    prompt_text = ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nwrite digits<|im_end|>\n"
                   "<|im_start|>assistant\n1 2<|im_end|>\n<|im_start|>user\nagain<|im_end|>\n<|im_start|>assistant\n")
    prompt = tokenizer.encode(prompt_text, add_special_tokens=False)
    answer = tokenizer.encode("5 5 5", add_special_tokens=False) + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert (demo.prompt_tokens, demo.answer_tokens) == (prompt, answer)
    datum = imitation_datum(demo.prompt_tokens, demo.answer_tokens)
    seq = prompt + answer
    assert datum.model_input.to_ints() == seq[:-1]
    assert list(datum.loss_fn_inputs["target_tokens"].data) == seq[1:]
    assert list(datum.loss_fn_inputs["weights"].data) == [0.0] * (len(prompt) - 1) + [1.0] * len(answer)

    # a template that closes no turn: the answer gets the EOS token, so the model still learns to stop
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    bare = demonstration(tokenizer, "data.jsonl", 1, messages[:3], 512)
    assert bare.answer_tokens == tokenizer.encode("1 2\n", add_special_tokens=False) + [tokenizer.eos_token_id]


GOOD = _conversation("add one and one", "1 + 1 = 2")
BAD_INPUT = {  # name: (file lines or None for a missing file, overrides, the error's pattern)
    "missing file": (None, {}, r"demonstrations file .*nope.jsonl does not exist: pass a JSONL file"),
    "empty file": (["", "  "], {}, r"data.jsonl has no demonstrations: write one JSON object per line"),
    "malformed line": ([GOOD, '{"messages": [}'], {}, r"data.jsonl line 2 is not valid JSON .*: write one JSON"),
    "no messages": ([GOOD, GOOD, {"text": "hi"}], {}, r"line 3 has no \"messages\" list"),
    "bad role": ([{"messages": [{"role": "tool", "content": "x"}]}], {}, r"line 1: message 0 is .* each message"),
    "no assistant turn": ([GOOD, {"messages": [{"role": "user", "content": "hi"}]}], {},
                          r"line 2 has no assistant turn: end its messages with the answer"),
    "ends with user": ([{"messages": GOOD["messages"] + [{"role": "user", "content": "more"}]}], {},
                       r"line 1 ends with a user turn: the last message must be the assistant answer"),
    "too long": ([GOOD, GOOD], {"max_model_len": 20}, r"line 1 is \d+ tokens, longer than max_model_len=20: "
                                                      "shorten the demonstration or raise max_model_len"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_line_naming_the_line_and_the_fix(case, tmp_path):
    lines, overrides, pattern = BAD_INPUT[case]
    data = tmp_path / "nope.jsonl" if lines is None else _write_jsonl(tmp_path / "data.jsonl", lines)
    with pytest.raises((ValueError, FileNotFoundError), match=pattern) as error:
        run_sft(SFTConfig(data=str(data), out=str(tmp_path / "out"), lora_rank=8, **overrides), **QUIET)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()  # nothing started


def test_ttt_sft_subprocess_end_to_end(tmp_path):
    data = _write_jsonl(tmp_path / "data.jsonl", [_conversation(u, a) for u, a in DEMOS])
    env = {**os.environ, "TTT_DEBUG": ""}
    done = subprocess.run([TTT, "sft", str(data), "--out", str(tmp_path / "out"), "lora_rank=8", "epochs=2",
                           "learning_rate=3e-3"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "epoch 1/2: loss" in done.stdout and "epoch 2/2: loss" in done.stdout
    assert f"wrote {tmp_path / 'out'}/adapter.json" in done.stdout and "init_adapter=" in done.stdout
    assert len(read_jsonl(tmp_path / "out" / "metrics.jsonl")) == 2

    bad = _write_jsonl(tmp_path / "bad.jsonl", [_conversation("a", "1"), {"messages": [{"role": "user",
                                                                                         "content": "hi"}]}])
    done = subprocess.run([TTT, "sft", str(bad), "--out", str(tmp_path / "bad")], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"ttt: error: {bad} line 2 has no assistant turn: end its messages "
                                                'with the answer to imitate, {"role": "assistant", "content": "..."}']


# ---- RL from the SFT adapter -----------------------------------------------------------------------------------

def _rl_config(out: Path, sft_out: str, *overrides: str):
    return compose(["+experiment=demo", f"out={out}", "wandb_mode=disabled", "groups=2", "group_size=4",
                    "max_tokens=8", "verifier_backend=local", "progress=false", f"init_adapter={sft_out}", *overrides])


def _record_sampling_clients(monkeypatch) -> list:
    """Every sampling client the loop's TrainingClient makes, in order: [0] serves step 0."""
    made = []
    original = LocalTrainingClient.save_weights_and_get_sampling_client

    def recording(self, *args, **kwargs):
        made.append(original(self, *args, **kwargs))
        return made[-1]

    monkeypatch.setattr(LocalTrainingClient, "save_weights_and_get_sampling_client", recording)
    return made


def _assert_serves_the_sft_adapter(sampling, sft, atol: float) -> None:
    deltas = []
    for demo, expected in zip(sft["demos"], sft["tuned_lps"]):
        served = sampling.compute_logprobs(types.ModelInput.from_ints(demo.prompt_tokens + demo.answer_tokens))
        deltas.append(float(np.abs(np.asarray(served.result()[1:]) - expected).max()))
    print(f"step-0 sampler vs SFT adapter logprobs: max |delta| {max(deltas):.2e}")
    assert max(deltas) <= atol
    assert np.mean(sft["after"]) > np.mean(sft["before"]) + 5  # so matching it is not matching the base model


@pytest.mark.vllm
def test_rl_from_init_adapter_serves_it_at_step_0_on_vllm(sft, vllm_sampler, tmp_path, monkeypatch):
    samplers = _record_sampling_clients(monkeypatch)
    service = _tiny_service(tmp_path / "tinker", sampler=vllm_sampler)
    try:
        records = run(_rl_config(tmp_path, sft["cfg"].out, "steps=1"), service=service, **QUIET)
        assert records[0]["probe_mismatch"] < 1e-4 and records[0]["mismatch_max"] < 1e-4
        _assert_serves_the_sft_adapter(samplers[0].result(), sft, atol=1e-4)
    finally:
        service.close()


def test_resume_of_a_run_from_init_adapter(sft, tmp_path, monkeypatch):
    """HF sampler: step 0 serves the SFT adapter; 2 steps + resume to 3 equal 3 uninterrupted steps."""
    samplers = _record_sampling_clients(monkeypatch)
    interrupted, uninterrupted = tmp_path / "interrupted", tmp_path / "uninterrupted"
    service = _tiny_service(interrupted / "tinker")
    try:
        run(_rl_config(interrupted, sft["cfg"].out, "steps=2", "sampler=hf"), service=service, **QUIET)
        _assert_serves_the_sft_adapter(samplers[0].result(), sft, atol=1e-5)
    finally:
        service.close()
    resumed = []
    records = run(_rl_config(interrupted, sft["cfg"].out, "steps=3", "sampler=hf", "resume=true"),
                  log=resumed.append)
    assert any("resumed" in str(line) and "after step 1" in str(line) for line in resumed)
    assert [r["step"] for r in records] == [0, 1, 2] and records[-1]["adapter_version"] == 3
    run(_rl_config(uninterrupted, sft["cfg"].out, "steps=3", "sampler=hf"), **QUIET)
    assert_same_records(read_jsonl(interrupted / "metrics.jsonl"), read_jsonl(uninterrupted / "metrics.jsonl"))
    assert read_checkpoint(interrupted)["best"] == read_checkpoint(uninterrupted)["best"]


def test_kl_penalty_measures_against_the_sft_adapter_and_keeps_it_on_resume(sft, tmp_path):
    """kl_coef > 0 from an SFT adapter: step 0 samples from the SFT adapter itself, so its KL to the reference
    (the same weights) is ~0, while the base model is far from it (SFT raised the answers' logprobs by > 5
    nats). A run resumed after step 0 measures step 1 against the same saved SFT weights: its records equal an
    uninterrupted run's (had it re-saved the reference from its trained weights, step 1's KL would be ~0)."""
    kl = ("kl_coef=0.1", "temperature=1.0", "sampler=hf")  # T=1: sampler logprobs are the model's own
    records = run(_rl_config(tmp_path / "sft_ref", sft["cfg"].out, "steps=1", *kl), **QUIET)
    assert records[0]["kl_sampler_base"] == pytest.approx(0.0, abs=1e-4)
    records = run(_rl_config(tmp_path / "base_ref", sft["cfg"].out, "steps=1", "kl_reference=base", *kl), **QUIET)
    assert records[0]["kl_sampler_base"] > 0.05  # E over the SFT policy's samples of log(p_sft / p_base) > 0

    interrupted, uninterrupted = tmp_path / "interrupted", tmp_path / "uninterrupted"
    run(_rl_config(interrupted, sft["cfg"].out, "steps=1", *kl), **QUIET)
    saved = read_checkpoint(interrupted)
    assert saved["kl_reference"].endswith("/sampler_weights/kl_reference")
    resumed = run(_rl_config(interrupted, sft["cfg"].out, "steps=2", "resume=true", *kl), **QUIET)
    assert [r["step"] for r in resumed] == [0, 1] and abs(resumed[1]["kl_sampler_base"]) > 1e-4
    run(_rl_config(uninterrupted, sft["cfg"].out, "steps=2", *kl), **QUIET)
    assert_same_records(read_jsonl(interrupted / "metrics.jsonl"), read_jsonl(uninterrupted / "metrics.jsonl"))


@pytest.mark.vllm
def test_kl_reference_adapter_on_vllm(sft, vllm_sampler, tmp_path):
    """On vLLM the reference adapter and the policy take turns in the engine each step: step 0's KL is ~0 (the
    same weights), step 1's is not (the policy moved), and step 1 samples from the trained policy, not from the
    reference it just scored with (the sampler-learner mismatch stays at float level)."""
    service = _tiny_service(tmp_path / "tinker", sampler=vllm_sampler)
    try:
        records = run(_rl_config(tmp_path, sft["cfg"].out, "steps=2", "kl_coef=0.1", "temperature=1.0"),
                      service=service, **QUIET)
    finally:
        service.close()
    assert records[0]["kl_sampler_base"] == pytest.approx(0.0, abs=1e-4)
    assert abs(records[1]["kl_sampler_base"]) > 1e-4
    assert max(r["mismatch_max"] for r in records) < 1e-4 and records[1]["probe_mismatch"] < 1e-4


def test_a_checkpoint_without_its_kl_reference_is_one_line():
    """A run resumed from a checkpoint written before kl_reference existed measured KL against the base model:
    it must say so, not silently switch policies (or save a reference from its trained weights)."""
    from types import SimpleNamespace

    from trainer.run_setup import kl_reference

    cfg = SimpleNamespace(trains=True, kl_coef=0.1, kl_reference_policy="init_adapter")
    with pytest.raises(ValueError, match="checkpoint has no kl_reference .* resume with kl_reference=base"):
        kl_reference(cfg, service=None, training=None, saved={"step": 3})
    assert kl_reference(SimpleNamespace(trains=True, kl_coef=0.0), None, None, None) == (None, None)


@pytest.mark.parametrize("override,pattern", [
    ("lora_rank=4", r"has LoRA rank 8, the run lora_rank=4: pass lora_rank=8"),
    ("mode=frozen", r"init_adapter needs a training mode"),
    ("kl_reference=sft", r"kl_reference must be auto, base or init_adapter, got 'sft'"),
    ("backend=tinker", r"was trained with backend=local and lives on this machine only"),
])
def test_init_adapter_that_does_not_fit_the_run_is_one_line(sft, tmp_path, override, pattern):
    with pytest.raises(ValueError, match=pattern):
        _rl_config(tmp_path, sft["cfg"].out, override)
    with pytest.raises(ValueError, match="init_adapter .*missing does not exist: pass the out dir of `ttt sft`"):
        _rl_config(tmp_path, str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="kl_reference=init_adapter needs init_adapter=.* or use kl_reference=base"):
        compose(["+experiment=demo", f"out={tmp_path}", "kl_reference=init_adapter"])
