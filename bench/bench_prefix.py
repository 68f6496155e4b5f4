"""Shared-prefix learner passes against plain passes: one forward_backward(importance_sampling) + optim_step over
G prompts x K rollouts (a GRPO step's datums), on the tiny model, CPU, with and without gradient checkpointing.

    .venv/bin/python bench/bench_prefix.py [--groups 8] [--group-size 8] [--prompt 61] [--completion 16] [--rounds 8]

Each variant is its own learner with the same LoRA init; variants run interleaved round by round (load drift
on a shared machine hits all alike); the first round is a warm-up. The speed-up is plain / shared within the
same checkpointing setting. Gradient equality is tested in tests/test_learner_prefix.py, not here.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tinker  # noqa: E402
import torch  # noqa: E402
from tinker import types  # noqa: E402

from inference.models import resolve_model  # noqa: E402
from trainer.learner import LoRALearner, LoraSpec  # noqa: E402


def datums(groups: int, group_size: int, prompt: int, completion: int) -> list[types.Datum]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(groups):
        prompt_tokens = torch.randint(3, 2000, (prompt,), generator=g).tolist()
        for _ in range(group_size):
            tokens = prompt_tokens + torch.randint(3, 2000, (completion,), generator=g).tolist()
            out.append(types.Datum(model_input=types.ModelInput.from_ints(tokens[:-1]), loss_fn_inputs={
                "target_tokens": tokens[1:], "logprobs": [0.0] * (prompt - 1) + [-1.0] * completion,
                "advantages": [0.0] * (prompt - 1) + [float(torch.randn(1, generator=g))] * completion}))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--groups", type=int, default=8)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--prompt", type=int, default=61)
    p.add_argument("--completion", type=int, default=16)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    data = datums(a.groups, a.group_size, a.prompt, a.completion)
    variants = {(ckpt, shared): LoRALearner(resolve_model("tiny"), LoraSpec(rank=8, seed=0), prefix_sharing=shared,
                                            gradient_checkpointing=ckpt)
                for ckpt in (False, True) for shared in (False, True)}
    times = {k: [] for k in variants}
    adam = tinker.AdamParams(learning_rate=1e-4)
    for rnd in range(a.rounds + 1):
        for key, learner in variants.items():
            t0 = time.perf_counter()
            learner.forward_backward(data, "importance_sampling")
            learner.optim_step(adam)
            if rnd:
                times[key].append(time.perf_counter() - t0)
    tokens = sum(d.model_input.length for d in data)
    print(f"{a.groups} prompts x {a.group_size} rollouts, {a.prompt} prompt + {a.completion} completion tokens "
          f"({tokens} tokens), tiny model, {a.threads} torch thread(s), median of {a.rounds} rounds\n")
    print("| gradient checkpointing | plain passes s | shared-prefix passes s | speed-up |\n|---|---|---|---|")
    for ckpt in (False, True):
        plain, shared = statistics.median(times[(ckpt, False)]), statistics.median(times[(ckpt, True)])
        print(f"| {'on' if ckpt else 'off'} | {plain:.3f} | {shared:.3f} | **{plain / shared:.2f}x** |")


if __name__ == "__main__":
    main()
