"""Comparing two runs of the loop that must agree: everything discrete exactly, floats to rounding.

The HF sampler decodes coalesced requests in one left-padded batch, so a prompt's logprobs depend on what it
was batched with in the last bits (attention reduces over the padded width); which requests coalesce depends
on when they arrive. Two runs then agree on every token, reward, buffer and best, and on losses, logprobs and
weights to ~1e-6 of their size (trained weights to REL_ADAM: Adam amplifies the rounding).
"""

from __future__ import annotations

import math

import torch

REL = 1e-5
# Trained weights after a few Adam steps: Adam divides each gradient by sqrt(v), so the rounding of small
# gradients is amplified (measured 6.5e-5 of a tensor's scale after 3 steps when two runs batched their sampling
# requests differently); discrete results must still be equal.
REL_ADAM = 5e-4


def _close(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and (
            a == b or math.isclose(a, b, rel_tol=REL, abs_tol=1e-6))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return a == b


def assert_same_records(a: list[dict], b: list[dict]) -> None:
    """Metrics records without timings: discrete fields equal, float fields within rounding. The
    sampler-learner mismatch fields are themselves rounding noise (~1e-5): equal within 1e-5."""
    def split(r):
        kept = {k: v for k, v in r.items() if not k.startswith("t_") and "mismatch" not in k}
        return kept, {k: v for k, v in r.items() if "mismatch" in k}

    assert len(a) == len(b)
    for x, y in zip(a, b):
        (x, x_noise), (y, y_noise) = split(x), split(y)
        assert _close(x, y), {k: (x.get(k), y.get(k)) for k in set(x) | set(y) if not _close(x.get(k), y.get(k))}
        assert x_noise.keys() == y_noise.keys()
        assert all(abs(x_noise[k] - y_noise[k]) <= 1e-5 for k in x_noise if x_noise[k] is not None), (x_noise, y_noise)


def assert_same_tensors(a: dict, b: dict, name: str, rel: float = REL) -> None:
    """Saved weights / optimizer moments: the same keys, each tensor within `rel` (1e-5) of its own scale."""
    assert a.keys() == b.keys(), name
    for k in a:
        scale = float(a[k].abs().max()) if a[k].numel() else 0.0
        worst = float((a[k] - b[k]).abs().max()) / max(scale, 1e-30) if a[k].numel() else 0.0
        torch.testing.assert_close(a[k], b[k], rtol=rel, atol=rel * scale + 1e-12,
                                   msg=f"{name}: {k} differs by {worst:.2e} of its scale (allowed {rel:g})")
