"""A runnable check of the learner under DeepSpeed; tests/test_learner_distributed.py launches it on 2 CPU ranks:

  TORCH_EXTENSIONS_DIR=~/.cache/ttt/torch_extensions accelerate launch \
      --config_file configs/accelerate/zero2_cpu.yaml -m trainer.ds_check --out /tmp/ds_check

Every rank runs the same schedule (run_schedule) on the same datums; rank 0 prints one line
`DS_CHECK [{...}, ...]` with each rank's losses, gradient norms, LoRA weight hash and the files it wrote.
Rank 0 also leaves <out>/state (save_state after step 2) and <out>/adapter (final weights) for comparison
with a single-process run of run_schedule().
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import tinker

from trainer.datums import rollout_datum

PROMPT = [1, 87, 85, 71, 84, 201, 2, 1, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51]  # shared: prefix passes
STEPS = 3
SAVE_AFTER = 2  # save_state after this many steps; step SAVE_AFTER + 1 is redone after load_state
ADAM = tinker.AdamParams(learning_rate=5e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.01,
                         grad_clip_norm=5.0)


def make_datums(step: int) -> list[tinker.Datum]:
    """Five datums of different lengths (an odd count: the ranks get unequal shards and micro-batch counts)."""
    datums = []
    for i in range(5):
        completion = [(37 * step + 11 * i + 5 * j) % 1900 + 20 for j in range(3 + 4 * i)]
        sampler_lp = [-8.0 - 0.1 * ((i + j) % 7) for j in range(len(completion))]
        datums.append(rollout_datum(PROMPT, completion, sampler_lp, advantage=(-1.0) ** i * (0.5 + 0.25 * i)))
    return datums


def run_step(learner, step: int) -> dict:
    """Two forward_backward calls (gradients accumulate across calls) and one optim_step."""
    datums = make_datums(step)
    first = learner.forward_backward(datums[:3], "importance_sampling")
    second = learner.forward_backward(datums[3:], "ppo")
    optim = learner.optim_step(ADAM)
    return {"loss": first["metrics"]["loss:sum"] + second["metrics"]["loss:sum"],
            "grad_norm": optim["grad_norm:mean"],
            "logprobs_sum": float(sum(o["logprobs"].sum() for o in first["loss_fn_outputs"]))}


def run_schedule(learner, out: Path) -> dict:
    """Steps 1..STEPS with save_state after SAVE_AFTER; then reload and redo the last step."""
    records = []
    for step in range(STEPS):
        records.append(run_step(learner, step))
        if step + 1 == SAVE_AFTER:
            learner.save_state(str(out / "state"))
    final_hash = weights_hash(learner)
    learner.save_weights_for_sampler(str(out / "adapter"))
    learner.load_state(str(out / "state"))
    redo = run_step(learner, SAVE_AFTER)
    return {"records": records, "hash": final_hash, "redo": redo, "redo_hash": weights_hash(learner)}


def weights_hash(learner) -> str:
    from trainer import distributed

    digest = hashlib.sha256()
    with distributed.gathered(learner.params, learner.engine):  # ZeRO-3 keeps only a slice per rank
        for name, p in sorted(learner.named_params, key=lambda item: item[0]):
            digest.update(name.encode())
            digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _record_writes(learner, writes: list[str]) -> None:
    """Wrap the two functions that write checkpoint files so the report says which rank called them."""
    import safetensors.torch

    save_pretrained, save_file = learner.model.save_pretrained, safetensors.torch.save_file
    learner.model.save_pretrained = lambda path, *a, **k: (writes.append(f"adapter:{path}"),
                                                           save_pretrained(path, *a, **k))[1]
    safetensors.torch.save_file = lambda t, path, *a, **k: (writes.append(f"state:{path}"),
                                                            save_file(t, path, *a, **k))[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--micro-batch-tokens", type=int, default=24, help="small: several passes per rank")
    args = parser.parse_args()

    from inference.models import resolve_model
    from trainer import distributed
    from trainer.learner import LoRALearner, LoraSpec

    learner = LoRALearner(resolve_model(args.model), LoraSpec(rank=4, seed=7),
                          micro_batch_tokens=args.micro_batch_tokens)
    writes: list[str] = []
    _record_writes(learner, writes)
    report = run_schedule(learner, Path(args.out))
    import torch.distributed as dist
    from accelerate.state import PartialState

    report.update(rank=distributed.rank(), world_size=distributed.world_size(), rank_env=os.environ.get("RANK"),
                  zero_stage=distributed.zero_stage(learner.engine), writes=writes,
                  backend=dist.get_backend() if dist.is_initialized() else None,
                  # what accelerate believes; on CPU it says 0 / True on every rank, hence distributed.rank()
                  accelerate_process_index=PartialState().process_index)
    reports = distributed.all_gather_objects(report)  # one line from rank 0: ranks' stdout interleave
    if distributed.is_rank0():
        print("DS_CHECK " + json.dumps(reports), flush=True)


if __name__ == "__main__":
    main()
    # As `ttt train` does (trainer/cli.py): after DeepSpeed ran, interpreter finalization intermittently aborts
    # in C++ static destructors (SIGABRT, seen in CI after the report was printed); leave without finalizers.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
