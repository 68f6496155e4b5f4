"""The improvement prompt built from a state (TTT-Discover state reuse, TTT_DISCOVER.md §2).

Layout: task statement -> rules (entry function, allowed libraries, CPUs, time budget, no IO) -> the exact
verifier source -> pre-defined globals -> "Here is the last code we ran" with its score before and after,
the target and the current gap -> the tail of that program's stdout -> what to answer with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from envs.base import State


@dataclass(frozen=True)
class PromptSpec:
    statement: str
    entry_signature: str  # e.g. "run_packing() -> (centers, radii, sum_radii)"
    objective: str  # e.g. "the sum of radii"
    higher_is_better: bool
    timeout_s: float
    cpus: int
    libraries: tuple[str, ...] = ("numpy", "scipy")
    target: float | None = None
    verifier_source: str = ""
    injected: tuple[str, ...] = ()  # one line per pre-defined global
    max_code_lines: int | None = None  # Erdős shows only the first 200 lines of the parent code
    extra_rules: tuple[str, ...] = field(default_factory=tuple)


def _fmt(x: float | None) -> str:
    return "none" if x is None or not math.isfinite(x) else f"{x:.10g}"


def rules_text(spec: PromptSpec) -> str:
    lines = [
        f"- Define a top-level function `{spec.entry_signature}`; it is called with exactly these arguments.",
        "- Use top-level functions only (no lambdas or closures passed to worker processes).",
        "- No file or network I/O: the program runs in a sandbox without network, and only its return value counts.",
        "- Allowed libraries: the Python standard library" + (f", {', '.join(spec.libraries)}." if spec.libraries
                                                              else " only."),
        f"- You have {spec.cpus} CPU core(s) and {spec.timeout_s:g} seconds in total; a program still running then "
        "is killed and scores nothing.",
        "- Printed output is never parsed; the verifier recomputes the score from your returned values.",
    ]
    return "\n".join(lines + [f"- {r}" for r in spec.extra_rules])


def _previous_attempt(spec: PromptSpec, state: State) -> str:
    better = "higher" if spec.higher_is_better else "lower"
    if not state.code:
        text = "There is no previous program: write one from scratch."
        if state.score is not None:
            text += f"\nThe starting construction scores {_fmt(state.score)} ({spec.objective}, {better} is better)."
    else:
        code = state.code
        if spec.max_code_lines is not None:
            lines = code.splitlines()
            if len(lines) > spec.max_code_lines:
                code = "\n".join(lines[: spec.max_code_lines]) + f"\n# ... ({len(lines) - spec.max_code_lines} more lines)"
        text = (f"Here is the last code we ran:\n```python\n{code.rstrip()}\n```\n"
                f"Values ({spec.objective}, {better} is better) before and after running the code above: "
                f"{_fmt(state.parent_score)} -> {_fmt(state.score)}")
    if spec.target is not None:
        text += f"\nTarget: {_fmt(spec.target)}."
        if state.score is not None and math.isfinite(state.score):
            gap = spec.target - state.score if spec.higher_is_better else state.score - spec.target
            text += f" Current gap: {_fmt(gap)}."
        text += " Further improvements will also be generously rewarded."
    if state.stdout_tail:
        text += f"\nLast output of that program (tail):\n```\n{state.stdout_tail[-500:]}\n```"
    return text


def improvement_prompt(spec: PromptSpec, state: State) -> str:
    parts = [spec.statement.strip(), "## Rules\n" + rules_text(spec)]
    if spec.verifier_source:
        parts.append("## Verifier (exact source; the score is recomputed by it)\n"
                     f"```python\n{spec.verifier_source.rstrip()}\n```")
    if spec.injected:
        parts.append("## Pre-defined globals\n" + "\n".join(f"- {line}" for line in spec.injected))
    parts.append("## Previous attempt\n" + _previous_attempt(spec, state))
    parts.append("Answer with one complete Python program in a single ```python code block; "
                 "the last code block of your answer is the one that runs.")
    return "\n\n".join(parts) + "\n"
