"""The one small interface every verifiable task implements.

envs/ knows nothing of the trainer or of inference: an Env turns a State into a prompt text, parses a
completion text into an answer, and verifies that answer into a VerifyResult. Env objects are plain,
picklable values so that verification can run on Ray CPU workers.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["ok", "format_error", "truncated", "runtime_error", "timeout", "oom", "invalid"]
STATUSES: tuple[str, ...] = ("ok", "format_error", "truncated", "runtime_error", "timeout", "oom", "invalid")
FORMAT_FAILURES: tuple[str, ...] = ("format_error", "truncated")  # no answer to verify; the rest were verified


@dataclass(frozen=True)
class State:
    """A candidate solution that a prompt builds on (TTT-Discover state reuse).

    `value` is the buffer value (higher is better, e.g. -C1), `score` the task's own objective (e.g. C1).
    `task_id` names the problem inside a multi-problem env (code, ARC); empty for single-problem envs.
    """

    code: str = ""
    construction: Any = None
    score: float | None = None
    value: float | None = None
    parent_score: float | None = None
    stdout_tail: str = ""
    task_id: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "State":
        return cls(**d)


@dataclass
class VerifyResult:
    """What verification of one answer produced. Program faults are records, never exceptions."""

    status: Status
    reward: float = 0.0
    score: float | None = None
    value: float | None = None
    construction: Any = None
    message: str = ""
    stdout_tail: str = ""
    wall_s: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict:
        return asdict(self)


def failed(status: Status, message: str, **kw) -> VerifyResult:
    """A failed evaluation: reward 0 (TTT-Discover's fail_score) and the reason."""
    return VerifyResult(status=status, reward=0.0, message=message, **kw)


_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)


def last_code_block(text: str, languages: tuple[str, ...] = ("python", "py", "")) -> str | None:
    """The body of the last fenced code block whose language tag is one of `languages`."""
    blocks = [body for lang, body in _FENCE.findall(text) if lang.lower() in languages]
    return blocks[-1] if blocks else None


def is_finite_number(x: Any) -> bool:
    """True only for real int/float values that are finite (bool and NaN/inf are rejected)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class Env(ABC):
    """A verifiable task. Subclasses are dataclasses of plain values (picklable)."""

    name: str = "env"
    # An answer cut off by the token limit is a format failure ("truncated"), never verified: its code block
    # may be incomplete, and a half-written program must not earn credit. Tasks whose answer is a prefix
    # (toy_digits) turn this off.
    needs_complete_answer: bool = True
    # The start of the answer, sent as the end of the prompt (the assistant's turn begins with it, e.g. "[" for a
    # list): a small model then answers in the format instead of chatting. `parse` gets the completion after it.
    answer_prefix: str = ""

    @abstractmethod
    def statement(self) -> str:
        """The task statement shown to the model."""

    def prompt(self, state: State) -> str:
        """The user message for one state; tasks with state reuse override this."""
        return self.statement()

    def parse(self, completion: str) -> str | None:
        """The answer inside a completion, or None when it has none (a format error)."""
        return last_code_block(completion)

    @abstractmethod
    def verify(self, answer: str, state: State) -> VerifyResult:
        """Score one answer. Must not raise for anything the model wrote."""

    def initial_states(self, rng: Any = None) -> list[State]:
        return [State()]

    def admits(self, state: State) -> bool:
        """Whether a valid child may enter the trainer's state buffer (it still counts for PUCT statistics)."""
        return True

    def evaluate(self, completion: str, state: State) -> VerifyResult:
        """parse -> verify, the path every task shares; a missing answer is a format error."""
        answer = self.parse(completion)
        if answer is None:
            return failed("format_error", "no answer found in the completion")
        return self.verify(answer, state)
