"""Code with hidden tests: write a function; reward = fraction of hidden tests passed.

One env holds `problems_per_family` problems of each chosen family (envs/code_tasks); a State's `task_id`
("lis/3") says which one a prompt is about. The program runs once in the sandbox and its function is called
on every hidden input there; outputs come back as JSON data and are compared here, exactly and type-aware,
with the expected outputs, which never leave this process.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from envs import code_tasks
from envs.base import State, VerifyResult
from envs.program_env import ProgramEnv
from envs.prompting import PromptSpec
from envs.sandbox import SandboxJob, SandboxOutcome


@dataclass
class CodeEnv(ProgramEnv):
    name: str = "code"
    families: list | None = None  # None = every family
    problems_per_family: int = 4
    tests_per_problem: int = 10
    timeout_s: float = 10.0
    memory_mb: int = 1024

    higher_is_better = True
    default_reward = "linear"

    def __post_init__(self):
        super().__post_init__()
        self.families = list(self.families) if self.families else list(code_tasks.DEFAULT_FAMILIES)
        unknown = [f for f in self.families if f not in code_tasks.FAMILIES]
        if unknown:
            raise ValueError(f"unknown code families {unknown}; known: {', '.join(code_tasks.FAMILIES)}")
        if self.tests_per_problem < 5 or self.problems_per_family < 1:
            raise ValueError("need tests_per_problem >= 5 and problems_per_family >= 1")

    def task_ids(self) -> list[str]:
        return [f"{f}/{k}" for f in self.families for k in range(self.problems_per_family)]

    def problem(self, task_id: str) -> code_tasks.Problem:
        family, _, index = task_id.partition("/")
        if family not in self.families or not index.isdigit() or int(index) >= self.problems_per_family:
            raise ValueError(f"unknown code task {task_id!r}; this env has {self.task_ids()[:3]} ...")
        return code_tasks.problem(family, int(index), self.seed, self.tests_per_problem)

    def _state_problem(self, state: State) -> code_tasks.Problem:
        return self.problem(state.task_id or self.task_ids()[0])

    def prompt_spec(self, state: State) -> PromptSpec:
        p = self._state_problem(state)
        statement = (f"Write a Python function `{p.signature}`.\n\n{p.statement}\n\nIt is checked against "
                     f"{len(p.tests)} hidden tests; the reward is the fraction passed (exact output match).")
        return PromptSpec(statement=statement, entry_signature=p.signature, objective="fraction of hidden tests passed",
                          higher_is_better=True, timeout_s=self.timeout_s, cpus=self.cpus_per_eval, target=1.0,
                          libraries=())

    def job(self, program: str, state: State) -> SandboxJob:
        p = self._state_problem(state)
        return SandboxJob(source=program, entry=p.entry, mode="each", result="json", calls=p.tests)

    def score_outcome(self, outcome: SandboxOutcome, state: State) -> VerifyResult:
        p = self._state_problem(state)
        results = outcome.value
        if not isinstance(results, list) or len(results) != len(p.tests):
            return self.rejected("the sandbox returned a malformed test report")
        passed, first_failure = 0, ""
        for i, (res, want) in enumerate(zip(results, p.expected)):
            ok = isinstance(res, dict) and "value" in res and code_tasks.same_output(res["value"], want)
            passed += ok
            if not ok and not first_failure:
                error = res.get("error") if isinstance(res, dict) else None
                first_failure = f"hidden test {i + 1}: " + (str(error)[:200] if error else "wrong answer")
        fraction = passed / len(p.tests)
        message = f"passed {passed}/{len(p.tests)} hidden tests" + (f"; first failure: {first_failure}"
                                                                     if first_failure else "")
        return self.accepted(fraction, None, state, message=message,
                             extra={"passed": passed, "total": len(p.tests), "all_passed": passed == len(p.tests),
                                    "task_id": p.task_id})

    def initial_states(self, rng=None) -> list[State]:
        ids = self.task_ids()
        if isinstance(rng, np.random.Generator):
            ids = [ids[i] for i in rng.permutation(len(ids))]
        return [State(task_id=t) for t in ids]
