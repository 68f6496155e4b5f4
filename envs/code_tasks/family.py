"""One procedurally generated family of algorithmic problems (seeded by axiom-rl's task list).

A family draws problem parameters (which change the statement, e.g. strict vs non-decreasing), then hidden
test inputs; the expected outputs come from the family's reference implementation, run here in the parent.
`reference_program` and `wrong_program` are complete candidate programs (a correct one and a plausible bug)
used by the tests to show that the hidden tests separate them.
"""

from __future__ import annotations

import inspect
import json
import random
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class Problem:
    family: str
    index: int
    params: dict
    statement: str
    signature: str
    entry: str
    tests: list  # [args list, ...] (hidden)
    expected: list  # JSON-compatible outputs, one per test

    @property
    def task_id(self) -> str:
        return f"{self.family}/{self.index}"


@dataclass(frozen=True)
class Family:
    name: str
    entry: str
    signature: str
    describe: Callable[[dict], str]  # params -> statement (with a worked example)
    sample_params: Callable[[random.Random], dict]
    make_inputs: Callable[[random.Random, dict, int], list]  # -> list of args lists (edge cases included)
    solve: Callable[..., Any]  # solve(params, *args) -> expected output
    impl: Callable  # the reference implementation whose source becomes the reference program
    wrong_impl: Callable  # a plausible bug with the same signature as impl
    param_names: tuple = field(default_factory=tuple)  # params passed to impl after the args

    def problem(self, index: int, seed: int, n_tests: int) -> Problem:
        rng = random.Random(f"{seed}:{self.name}:{index}")  # str seeds are hashed deterministically
        params = self.sample_params(rng)
        tests = canonical(self.make_inputs(rng, params, n_tests))
        expected = [canonical(self.solve(params, *args)) for args in tests]
        return Problem(self.name, index, params, self.describe(params), self.signature, self.entry, tests, expected)

    def program(self, params: dict, wrong: bool = False) -> str:
        """A complete program defining the entry function via the (wrong or) reference implementation."""
        impl = self.wrong_impl if wrong else self.impl
        helpers = f"{inspect.getsource(self.impl)}\n\n" if wrong else ""  # a bug may reuse the reference
        arg_names = self.signature[self.signature.index("(") + 1: self.signature.index(")")]
        args = ", ".join(a.split(":")[0].strip() for a in arg_names.split(",") if a.strip())
        extra = "".join(f", {params[p]!r}" for p in self.param_names)
        return (f"{helpers}{inspect.getsource(impl)}\n\ndef {self.entry}({args}):\n"
                f"    return {impl.__name__}({args}{extra})\n")


def canonical(value: Any) -> Any:
    """The JSON form of a value (tuples become lists), as the sandbox would return it."""
    return json.loads(json.dumps(value, allow_nan=False))


def same_output(got: Any, expected: Any) -> bool:
    """Exact, type-aware equality of plain JSON data (True is not 1; 1 is not 1.0)."""
    return json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True)
