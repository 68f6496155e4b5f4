"""The final answer vs the thinking, for each chat format; truncated answers are their own failure.

Real tokenizers where we have them (the tiny model, SmolLM2 when its package is installed); Qwen3 `<think>` and
gpt-oss harmony completions are built to their documented formats (no downloads) and round-tripped through a
real tokenizer, the path the loop takes (tokens -> text with special tokens kept -> final answer).
"""

from __future__ import annotations

import pytest

from envs.base import FORMAT_FAILURES, State, last_code_block
from envs.code_env import CodeEnv
from inference.chat_formats import final_answer
from trainer.rollouts import Rollout, unverifiable

DRAFT = "```python\ndef f(xs):\n    return xs  # a draft inside the thinking\n```"
ANSWER = "```python\ndef f(xs):\n    return sorted(set(xs))\n```"


def test_plain_completion_is_the_whole_answer():
    a = final_answer(f"Here it is:\n{ANSWER}<|im_end|>", plain=f"Here it is:\n{ANSWER}")
    assert a.text == f"Here it is:\n{ANSWER}" and a.format == "plain" and a.reasoning == "" and not a.problem


def test_qwen3_think_block_is_not_parsed():
    a = final_answer(f"<think>\nLet me try {DRAFT} first.\n</think>\n\nFinal:\n{ANSWER}<|im_end|>")
    assert a.format == "think" and "draft" in a.reasoning and "draft" not in a.text
    assert last_code_block(a.text).strip() == "def f(xs):\n    return sorted(set(xs))"


def test_think_opened_in_the_prompt_shows_only_the_closing_tag():
    a = final_answer(f"reasoning {DRAFT}\n</think>\n{ANSWER}")
    assert a.text == ANSWER and "draft" in a.reasoning


def test_unclosed_think_has_no_answer():
    a = final_answer(f"<think>\nstill thinking {DRAFT}")
    assert a.text is None and "never closed" in a.problem and "draft" in a.reasoning


def test_harmony_final_channel_only():
    raw = (f"<|channel|>analysis<|message|>We need f. {DRAFT}<|end|>"
           f"<|start|>assistant<|channel|>commentary to=functions.x<|message|>{{}}<|call|>"
           f"<|start|>assistant<|channel|>final<|message|>{ANSWER}<|return|>")
    a = final_answer(raw)
    assert a.format == "harmony" and a.text == ANSWER and "draft" in a.reasoning


def test_harmony_without_final_channel_has_no_answer():
    a = final_answer(f"<|channel|>analysis<|message|>We need f. {DRAFT}")
    assert a.text is None and "final" in a.problem


@pytest.mark.parametrize("model", ["tiny", "smollm2-135m"])
def test_formats_survive_a_real_tokenizer_round_trip(model):
    from transformers import AutoTokenizer

    from inference.models import ModelNotFound, resolve_model

    try:
        tok = AutoTokenizer.from_pretrained(resolve_model(model))
    except ModelNotFound as e:
        pytest.skip(str(e))
    end = tok.eos_token
    for raw_text, expected in ((f"<think>{DRAFT}</think>\n{ANSWER}{end}", ANSWER),
                               (f"<|channel|>analysis<|message|>{DRAFT}<|end|><|start|>assistant<|channel|>final"
                                f"<|message|>{ANSWER}<|return|>", ANSWER),
                               (f"{ANSWER}{end}", ANSWER)):
        tokens = tok.encode(raw_text, add_special_tokens=False)
        a = final_answer(tok.decode(tokens, skip_special_tokens=False), tok.decode(tokens, skip_special_tokens=True))
        assert a.text.strip() == expected, (model, raw_text)


def _rollout(text: str, stop_reason: str, **extra) -> Rollout:
    return Rollout(group=0, index=0, parent_id=0, prompt_tokens=[1], tokens=[5] * 7, logprobs=[0.0] * 7, mask=[1] * 7,
                   text=text, stop_reason=stop_reason, extra=extra)


def test_truncated_answers_are_format_failures_with_their_own_status():
    r = unverifiable(_rollout(ANSWER, "length"), needs_complete_answer=True)
    assert r.status == "truncated" and r.reward == 0.0 and "max_tokens" in r.message
    assert r.status in FORMAT_FAILURES
    assert unverifiable(_rollout(ANSWER, "stop"), needs_complete_answer=True) is None
    assert unverifiable(_rollout("123", "length"), needs_complete_answer=False) is None  # toy_digits
    no_answer = unverifiable(_rollout("", "stop", no_answer="the thinking (<think>) never closed"), True)
    assert no_answer.status == "format_error" and "never closed" in no_answer.message
    assert CodeEnv.needs_complete_answer and not __import__("envs.toy_digits").toy_digits.ToyDigitsEnv.needs_complete_answer


def test_code_env_scores_only_the_final_answer():
    env = CodeEnv(families=["unique_sorted"], problems_per_family=1, timeout_s=20)
    state = State(task_id="unique_sorted/0")
    descending = env.problem("unique_sorted/0").params["descending"]
    body = f"return sorted(set(xs), reverse={descending})"
    raw = (f"<think>```python\ndef unique_sorted(xs):\n    return xs\n```</think>"
           f"```python\ndef unique_sorted(xs):\n    {body}\n```")
    result = env.evaluate(final_answer(raw).text, state)
    assert result.ok and result.reward == 1.0, result.message
    only_draft = final_answer(f"<think>```python\ndef unique_sorted(xs):\n    {body}\n```</think>I am done.")
    assert env.evaluate(only_draft.text, state).status == "format_error"  # a program in the thinking never runs
