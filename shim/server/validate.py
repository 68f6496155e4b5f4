"""Range checks of the numbers a client sends, at the edge: a NaN learning rate or beta1 = 1 would otherwise
reach the optimizer and silently turn a model's weights into NaN (or divide by zero) long after the request
returned 200. Everything here raises BadRequest (-> 400, which the SDK does not retry).
"""

from __future__ import annotations

import math

import torch

from shim.server.wire_decode import BadRequest

# field -> (low, high, low inclusive, high inclusive); Tinker documents no bounds, these reject only values no
# training run can mean (an lr of 1e30, beta1 >= 1, a negative eps).
ADAM_BOUNDS = {
    "learning_rate": (0.0, 10.0, True, True),
    "beta1": (0.0, 1.0, True, False),
    "beta2": (0.0, 1.0, True, False),
    "eps": (0.0, 1.0, False, True),
    "weight_decay": (0.0, 100.0, True, True),
    "grad_clip_norm": (0.0, 1e12, True, True),
}
INT64_MAX = 2**63 - 1


def finite(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"{name} must be a number, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:
        raise BadRequest(f"{name} is out of range") from None
    if not math.isfinite(number):
        raise BadRequest(f"{name} must be finite, got {value!r}")
    return number


def in_range(value, name: str, low: float, high: float, low_incl: bool = True, high_incl: bool = True) -> float:
    number = finite(value, name)
    if number < low or number > high or (number == low and not low_incl) or (number == high and not high_incl):
        raise BadRequest(f"{name} must be in {'[' if low_incl else '('}{low:g}, {high:g}{']' if high_incl else ')'}"
                         f", got {number!r}")
    return number


def int_in(value, name: str, low: int, high: int = INT64_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name} must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise BadRequest(f"{name} must be in [{low}, {high}], got {value}")
    return value


def adam_params(given: dict):
    """The request's adam_params (0.7.0 sends only the fields that were set) -> a checked AdamParams."""
    from trainer.learner import AdamParams

    if not isinstance(given, dict):
        raise BadRequest("adam_params must be an object")
    unknown = set(given) - set(ADAM_BOUNDS)
    if unknown:
        raise BadRequest(f"unknown adam_params fields {sorted(unknown)}")
    values = {k: in_range(v, f"adam_params.{k}", *ADAM_BOUNDS[k]) for k, v in given.items() if v is not None}
    return AdamParams(**values)


def sampling_params(params: dict) -> dict:
    """Checks Tinker SamplingParams fields in place of trusting them; returns params unchanged."""
    if not isinstance(params, dict):
        raise BadRequest("sampling_params must be an object")
    if params.get("max_tokens") is not None:
        int_in(params["max_tokens"], "sampling_params.max_tokens", 1, 1 << 20)
    if params.get("temperature") is not None:
        in_range(params["temperature"], "sampling_params.temperature", 0.0, 1e4)
    if params.get("top_p") is not None:
        in_range(params["top_p"], "sampling_params.top_p", 0.0, 1.0, low_incl=False)
    if params.get("top_k") is not None:
        int_in(params["top_k"], "sampling_params.top_k", -1, 1 << 31)
    if params.get("seed") is not None:
        int_in(params["seed"], "sampling_params.seed", -(2**63), 2**64 - 1)
    stop = params.get("stop")
    if stop is not None and not isinstance(stop, str):
        if not isinstance(stop, list) or not all(isinstance(s, str) or (isinstance(s, int) and not isinstance(s, bool)
                                                                         and 0 <= s <= INT64_MAX) for s in stop):
            raise BadRequest("sampling_params.stop must be a string, a list of strings or of token ids")
    return params


def loss_fn_config(config: dict) -> dict:
    for key, value in config.items():
        if not isinstance(key, str):
            raise BadRequest("loss_fn_config keys must be strings")
        if not isinstance(value, str):
            finite(value, f"loss_fn_config.{key}")
    return config


def datum_tensors(data) -> None:
    """Float inputs (advantages, logprobs, weights) must be finite: one NaN advantage turns every gradient of
    the step into NaN. One isfinite over all of them (per-tensor checks cost ~5 us each, on the critical path
    of every forward_backward); only a failing batch is searched for the datum to name."""
    floats = [t.reshape(-1) for d in data for t in d.loss_fn_inputs.values() if t.is_floating_point() and t.numel()]
    if not floats or bool(torch.isfinite(torch.cat(floats)).all()):
        return
    for i, datum in enumerate(data):
        for key, tensor in datum.loss_fn_inputs.items():
            if tensor.is_floating_point() and tensor.numel() and not bool(torch.isfinite(tensor).all()):
                raise BadRequest(f"datum {i} {key} has NaN or infinite values")


def tokens(values: list[int], what: str) -> list[int]:
    for t in values:
        if not 0 <= t <= INT64_MAX:
            raise BadRequest(f"{what}: token id {t} is out of range")
    return values
