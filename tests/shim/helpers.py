"""Datums and comparisons shared by the shim tests (tokens are ids of the tiny model's vocabulary)."""

from __future__ import annotations

import math

from tinker import types

PROMPT = [5, 17, 42, 9, 101, 33]


def rl_datum(prompt=PROMPT, completion=(7, 88, 13, 250), sampler_lp=-5.0, advantage=1.0) -> types.Datum:
    seq = list(prompt) + list(completion)
    n_prompt = len(prompt) - 1
    n = len(seq) - 1
    return types.Datum(model_input=types.ModelInput.from_ints(seq[:-1]), loss_fn_inputs={
        "target_tokens": seq[1:],
        "logprobs": [0.0] * n_prompt + [sampler_lp - 0.1 * i for i in range(n - n_prompt)],
        "advantages": [0.0] * n_prompt + [advantage] * (n - n_prompt)})


def sft_datum(seq=(3, 14, 15, 92, 65, 35, 89, 79)) -> types.Datum:
    seq = list(seq)
    return types.Datum(model_input=types.ModelInput.from_ints(seq[:-1]),
                       loss_fn_inputs={"target_tokens": seq[1:], "weights": [0.0, 0.0] + [1.0] * (len(seq) - 3)})


def data_for(loss_fn: str) -> list[types.Datum]:
    if loss_fn == "cross_entropy":
        return [sft_datum(), sft_datum((9, 8, 7, 6, 5))]
    return [rl_datum(), rl_datum(completion=(19, 4, 400), advantage=-0.5)]


def logprob_lists(out: types.ForwardBackwardOutput) -> list[list[float]]:
    return [o["logprobs"].tolist() for o in out.loss_fn_outputs]


def assert_close(a, b, tol=1e-6):
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b), (a, b)
        for x, y in zip(a, b):
            assert_close(x, y, tol)
    elif a is None or b is None:
        assert a is None and b is None, (a, b)
    else:
        assert math.isclose(a, b, rel_tol=tol, abs_tol=tol), (a, b)
