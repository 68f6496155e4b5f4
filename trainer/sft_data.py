"""Chat demonstrations (JSONL) -> cross_entropy Datums for `ttt sft`.

Each line is {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]} and ends with the
assistant turn to imitate. The prompt is every message before that turn, rendered with the model's chat
template and add_generation_prompt: the tokens the RL loop and a sampler start from. The answer is the text
the template adds after the prompt when the final turn is rendered too: the content and its end-of-turn token
(plus whatever the template puts between, e.g. an empty think block). Prompt targets get weight 0, answer
targets weight 1 (trainer/datums.py::imitation_datum).

Every problem is one ValueError naming the file, the line and the fix; the whole file is checked before any
model is loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

ROLES = ("system", "user", "assistant")
LINE_FORMAT = ('one JSON object per line: {"messages": [{"role": "user", "content": "..."}, '
               '{"role": "assistant", "content": "..."}]}')


@dataclass
class Demonstration:
    line: int  # 1-based line of the JSONL file, for messages
    prompt_tokens: list[int]
    answer_tokens: list[int]


def read_conversations(path: str | Path) -> list[tuple[int, list[dict]]]:
    """-> (line number, messages) per non-blank line, each checked for shape."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"demonstrations file {path} does not exist: pass a JSONL file of chat "
                                f"demonstrations ({LINE_FORMAT})")
    conversations = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                conversations.append((number, _messages(f"{path} line {number}", line)))
    if not conversations:
        raise ValueError(f"{path} has no demonstrations: write {LINE_FORMAT}")
    return conversations


def _messages(where: str, line: str) -> list[dict]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where} is not valid JSON ({e.msg}, column {e.colno}): write {LINE_FORMAT}") from None
    messages = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where} has no \"messages\" list: write {LINE_FORMAT}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"{where}: message {i} is {json.dumps(m)[:80]}; each message must be "
                             '{"role": "system"|"user"|"assistant", "content": "<text>"}')
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError(f"{where} has no assistant turn: end its messages with the answer to imitate, "
                         '{"role": "assistant", "content": "..."}')
    if messages[-1]["role"] != "assistant":
        raise ValueError(f"{where} ends with a {messages[-1]['role']} turn: the last message must be the assistant "
                         "answer to imitate (drop the messages after it)")
    if len(messages) == 1:
        raise ValueError(f"{where} has only the answer: put the prompt before it (a user message)")
    return messages


def demonstration(tokenizer, path: str | Path, number: int, messages: list[dict], max_model_len: int,
                  chat_template_kwargs: dict | None = None) -> Demonstration:
    """One conversation (line `number` of `path`) -> prompt tokens (as the loop renders a prompt) + answer tokens."""
    where = f"{path} line {number}"
    kwargs = dict(chat_template_kwargs or {})
    prompt_text = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False, **kwargs)
    full_text = tokenizer.apply_chat_template(messages, add_generation_prompt=False, tokenize=False, **kwargs)
    if not full_text.startswith(prompt_text):
        raise ValueError(f"{where}: the model's chat template renders the conversation differently from its prompt "
                         "(the prompt is not a prefix of the whole), so the answer cannot be cut out: rewrite the "
                         "earlier turns as the template expects them (e.g. no reasoning in earlier assistant turns)")
    prompt_tokens = list(tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True,
                                                       return_dict=False, **kwargs))
    answer_tokens = _answer_tokens(tokenizer, full_text[len(prompt_text):])
    length = len(prompt_tokens) + len(answer_tokens)
    if length > max_model_len:
        raise ValueError(f"{where} is {length} tokens, longer than max_model_len={max_model_len}: shorten the "
                         "demonstration or raise max_model_len")
    return Demonstration(number, prompt_tokens, answer_tokens)


def _answer_tokens(tokenizer, answer_text: str) -> list[int]:
    """The answer up to and including its end-of-turn token. Templates put a newline between turns after it
    (ChatML: '<|im_end|>\\n'); a sampler stops at the end-of-turn token, so the newline is not trained. A
    template that closes no turn gets the EOS token, so the model still learns to stop."""
    tokens = list(tokenizer.encode(answer_text, add_special_tokens=False))
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    ends = [i for i, t in enumerate(tokens) if t in special]
    if ends and not tokenizer.decode(tokens[ends[-1] + 1:]).strip():
        return tokens[: ends[-1] + 1]
    if tokenizer.eos_token_id is not None and (not tokens or tokens[-1] != tokenizer.eos_token_id):
        tokens.append(tokenizer.eos_token_id)
    return tokens
