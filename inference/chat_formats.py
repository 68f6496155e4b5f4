"""The final answer inside a completion, with the model's thinking left out.

Reasoning models write their thinking before the answer, and a task must only ever parse the answer (a code
block inside the thinking is a draft, not the submission). Formats handled, from their documented shapes:
- Qwen3 / DeepSeek-R1 style: `<think> ... </think> answer`. Some templates put `<think>` in the prompt, so the
  completion may start inside the thinking and show only the closing tag. A `<think>` that never closes means
  the model never reached its answer.
- gpt-oss harmony: `<|channel|>analysis<|message|> ... <|end|><|start|>assistant<|channel|>final<|message|>
  answer<|return|>`. Only the `final` channel is the answer; `analysis` and `commentary` are not.
- Anything else (ChatML models such as SmolLM2 or Qwen2.5): the whole completion is the answer.

`raw` must be decoded with special tokens kept (harmony's markers are special tokens); `plain` is the same
tokens decoded without them, used as the answer when the completion has no thinking markers, so that plain
models see exactly the text they always did.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
HARMONY_MESSAGE = re.compile(r"<\|channel\|>\s*([A-Za-z_]+)[^<]*?<\|message\|>(.*?)"
                             r"(?=<\|end\|>|<\|return\|>|<\|call\|>|<\|start\|>|<\|channel\|>|$)", re.DOTALL)
END_MARKERS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "<|return|>", "</s>", "<|end_of_text|>")


@dataclass(frozen=True)
class FinalAnswer:
    text: str | None  # the answer a task parses; None when the completion has none
    reasoning: str = ""  # the thinking / analysis part, never parsed
    problem: str = ""  # why there is no answer (text is None)
    format: str = "plain"  # "plain" | "think" | "harmony"


def _strip_end(text: str) -> str:
    text = text.rstrip()
    changed = True
    while changed:
        changed = False
        for marker in END_MARKERS:
            if text.endswith(marker):
                text, changed = text[: -len(marker)].rstrip(), True
    return text


def final_answer(raw: str, plain: str | None = None) -> FinalAnswer:
    """Split one completion into its final answer and its reasoning (see the module docstring)."""
    if "<|channel|>" in raw:
        messages = [(channel.lower(), body) for channel, body in HARMONY_MESSAGE.findall(raw)]
        finals = [body for channel, body in messages if channel == "final"]
        reasoning = "\n".join(body.strip() for channel, body in messages if channel != "final")
        if not finals:
            return FinalAnswer(None, reasoning, "no harmony `final` channel: the model did not reach its answer",
                               "harmony")
        return FinalAnswer(_strip_end(finals[-1]).strip(), reasoning, format="harmony")
    if THINK_CLOSE in raw:
        thinking, _, answer = raw.rpartition(THINK_CLOSE)
        thinking = thinking.replace(THINK_OPEN, "", 1).strip()
        return FinalAnswer(_strip_end(answer).strip(), thinking, format="think")
    if THINK_OPEN in raw:
        return FinalAnswer(None, raw.split(THINK_OPEN, 1)[1].strip(),
                           "the thinking (<think>) never closed: the model did not reach its answer", "think")
    return FinalAnswer(plain if plain is not None else _strip_end(raw))
