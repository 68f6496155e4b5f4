"""Token-budget micro-batching (issue 4): passes respect `micro_batch_tokens` (a datum longer than it runs alone),
the (T, V) logits of a pass are never built (lm_head + log-softmax run in row chunks), any budget gives the loss
and gradients of one big batch (checked against a plain HF forward computed here), and peak memory is set by the
micro-batch, not by the number of datums."""

import os
import random
import subprocess
import sys
import textwrap

import pytest
import tinker
import torch

from trainer.learner import LoRALearner, LoraSpec
from trainer.learner import logprobs as learner_logprobs
from trainer.learner.inputs import plan_micro_batches
from tolerances import MODEL_N, tol

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Small sizes keep the tests fast; the logic does not depend on scale: 400 > BUDGET (a pass of its own) and
# > CHUNK (several lm_head chunks in one pass), and every pass spans several chunks or ends mid-chunk.
LENGTHS = [150, 60, 400, 30, 20, 180]
BUDGET = 256
CHUNK = 96


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(learner_logprobs, "CHUNK_ROWS", CHUNK)  # read at call time


def make_data(lengths, vocab=2048, seed=0):
    g = torch.Generator().manual_seed(seed)
    data = []
    for n in lengths:
        tokens = torch.randint(0, vocab, (n + 1,), generator=g)
        data.append(tinker.Datum(model_input=tinker.ModelInput.from_ints(tokens[:-1].tolist()), loss_fn_inputs={
            "target_tokens": tokens[1:].tolist(),
            "logprobs": (-7.0 + 0.3 * torch.randn(n, generator=g)).tolist(),
            "advantages": torch.randn(n, generator=g).tolist()}))
    return data


def make_learner(path, **options):
    learner = LoRALearner(path, LoraSpec(rank=4, seed=3, train_unembed=options.pop("train_unembed", False)),
                          **options)
    with torch.no_grad():  # non-zero B: every LoRA matrix gets a gradient, logprobs depend on the adapter
        g = torch.Generator().manual_seed(0)
        for name, p in learner.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return learner


def take_grads(learner):
    grads = {n: p.grad.detach().clone() for n, p in learner.named_params}
    learner.optimizer.zero_grad(set_to_none=True)
    return grads


def reference(learner, data):
    """Sum-reduced importance-sampling loss, per-token logprobs and gradients from a plain HF forward of each
    datum on its own: full logits, log_softmax, gather; nothing from the learner's batching code."""
    total = torch.zeros(())
    logprobs = []
    for d in data:
        ids = torch.tensor([d.model_input.to_ints()])
        targets = torch.tensor(d.loss_fn_inputs["target_tokens"].data)
        q = torch.tensor(d.loss_fn_inputs["logprobs"].data)
        adv = torch.tensor(d.loss_fn_inputs["advantages"].data)
        logits = learner.model(input_ids=ids, use_cache=False).logits[0]
        lp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
        lp = lp.gather(-1, targets[:, None])[:, 0]
        total = total - (torch.exp(lp - q) * adv).sum()
        logprobs.append(lp.detach())
    total.backward()
    return float(total.detach()), logprobs, take_grads(learner)


def assert_close(out, grads, ref, tol):
    ref_loss, ref_lps, ref_grads = ref
    assert out["metrics"]["loss:sum"] == pytest.approx(ref_loss, rel=tol, abs=tol)
    for got, want in zip(out["loss_fn_outputs"], ref_lps):
        assert got["logprobs"].shape == want.shape
        assert float((got["logprobs"] - want).abs().max()) <= tol * float(want.abs().max())
    assert grads.keys() == ref_grads.keys()
    for n in grads:
        assert float(ref_grads[n].norm()) > 0, n  # a real gradient, not two zeros agreeing
        assert float((grads[n] - ref_grads[n]).norm()) <= tol * float(ref_grads[n].norm()), n


# -- (a) plans and passes -------------------------------------------------------------------------------------
@pytest.mark.parametrize("packed", [True, False])
def test_plans_respect_the_budget_and_long_datums_run_alone(packed):
    rng = random.Random(0)
    for _ in range(300):
        budget = rng.randint(1, 600)
        lengths = [rng.randint(1, 800) for _ in range(rng.randint(1, 40))]
        plan = plan_micro_batches(lengths, budget, packed)
        assert sorted(i for group in plan for i in group) == list(range(len(lengths)))  # each datum once
        for group in plan:
            cost = sum(lengths[i] for i in group) if packed else max(lengths[i] for i in group) * len(group)
            if cost > budget:  # only a single datum that alone exceeds the budget may do so
                assert len(group) == 1 and lengths[group[0]] > budget, (budget, lengths, group)
        for i, n in enumerate(lengths):
            if n > budget:
                assert [i] in plan
    assert plan_micro_batches([5000], 1024, packed) == [[0]]


@pytest.mark.parametrize("packing", [True, False])
def test_learner_passes_follow_the_plan_and_never_build_full_logits(tiny_model_path, packing):
    learner = make_learner(tiny_model_path, micro_batch_tokens=BUDGET, packing=packing)
    passes, head_rows = [], []
    h1 = learner.decoder.register_forward_pre_hook(
        lambda m, args, kwargs: passes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    h2 = learner.lm_head.register_forward_pre_hook(lambda m, args: head_rows.append(args[0].shape))
    try:
        out = learner.forward_backward(make_data(LENGTHS), "importance_sampling")
    finally:
        h1.remove()
        h2.remove()
    plan = plan_micro_batches(LENGTHS, BUDGET, packing)
    assert len(passes) == len(plan) >= 3
    assert (1, 400) in passes  # the over-long datum: a pass of its own
    assert all(b * w <= BUDGET for b, w in passes if (b, w) != (1, 400))
    assert [tuple(lp["logprobs"].shape) for lp in out["loss_fn_outputs"]] == [(n,) for n in LENGTHS]
    # lm_head never sees more than CHUNK_ROWS rows: (B, 1, H) = the model's own logits_to_keep=1 call, (C, H) =
    # chunks, run once in forward and once more in backward (recomputation), real tokens only (no padding)
    assert all(s.numel() // s[-1] <= CHUNK for s in head_rows)
    assert max(s[0] for s in head_rows if len(s) == 2) == CHUNK
    chunk_rows = sum(s[0] for s in head_rows if len(s) == 2)
    assert chunk_rows == 2 * sum(LENGTHS)
    assert all(p.grad is not None for p in learner.params)


# -- (b) exactness -------------------------------------------------------------------------------------------
# float64 makes the comparison sharp: batching changes only the order of float sums, which in float64 moves
# results by ~1e-15, while any real error (a token dropped or counted twice, a datum attending across the pack,
# a misaligned target) moves them by >= ~1e-4. float32 (the CPU default) is checked too, at float32 noise.
TOL = {torch.float64: 1e-6, torch.float32: tol(1.0, MODEL_N)}  # relative; float64 leaves room for any order


@pytest.mark.parametrize("dtype, options", [(torch.float64, {}), (torch.float64, {"packing": False}),
                                            (torch.float64, {"train_unembed": True}),
                                            (torch.float64, {"gradient_checkpointing": True}), (torch.float32, {})])
def test_small_budget_equals_one_pass_and_plain_hf_reference(tiny_model_path, options, dtype):
    data = make_data(LENGTHS, seed=1)
    learner = make_learner(tiny_model_path, micro_batch_tokens=BUDGET, dtype=dtype, **options)
    small = learner.forward_backward(data, "importance_sampling")
    small_grads = take_grads(learner)
    learner.micro_batch_tokens = 10**6  # one pass for everything (packed: one row; padded: 6 x 400)
    whole = learner.forward_backward(data, "importance_sampling")
    whole_grads = take_grads(learner)
    ref = reference(learner, data)
    assert_close(small, small_grads, ref, TOL[dtype])
    assert_close(whole, whole_grads, ref, TOL[dtype])
    if dtype == torch.float64:  # the two learner runs differ only in the order of their sums
        assert_close(small, small_grads, (whole["metrics"]["loss:sum"], [o["logprobs"] for o in
                                                                        whole["loss_fn_outputs"]], whole_grads), 1e-12)
    if options.get("train_unembed"):
        assert any("lm_head" in n for n in small_grads)  # the chunked lm_head's LoRA gets its gradient


def test_forward_only_and_accumulation_across_calls(tiny_model_path):
    """forward() gives the same logprobs without gradients; two forward_backward calls on halves add up to one
    call on all (gradients accumulate until optim_step)."""
    data = make_data(LENGTHS, seed=2)
    learner = make_learner(tiny_model_path, micro_batch_tokens=BUDGET, dtype=torch.float64)
    fwd = learner.forward(data, "importance_sampling")
    assert all(p.grad is None for p in learner.params)
    first = learner.forward_backward(data[:3], "importance_sampling")
    second = learner.forward_backward(data[3:], "importance_sampling")
    grads = take_grads(learner)
    ref_loss, ref_lps, ref_grads = reference(learner, data)
    halves = {"metrics": {"loss:sum": first["metrics"]["loss:sum"] + second["metrics"]["loss:sum"]},
              "loss_fn_outputs": first["loss_fn_outputs"] + second["loss_fn_outputs"]}
    assert_close(halves, grads, (ref_loss, ref_lps, ref_grads), 1e-6)
    assert fwd["metrics"]["loss:sum"] == pytest.approx(ref_loss, rel=1e-6)
    for got, want in zip(fwd["loss_fn_outputs"], ref_lps):
        assert float((got["logprobs"] - want).abs().max()) <= 1e-6 * float(want.abs().max())


# -- (c) memory ----------------------------------------------------------------------------------------------
PEAK_SCRIPT = textwrap.dedent("""
    import os, resource, sys
    sys.path.insert(0, {root!r})
    sys.path.insert(0, os.path.join({root!r}, "tests"))
    import torch
    torch.set_num_threads(1)
    from test_learner_token_budget import make_data, make_learner
    learner = make_learner({path!r}, micro_batch_tokens={seq_len})
    learner.forward_backward(make_data([64]), "importance_sampling")  # warm-up: lazy init, gradient buffers
    for n in map(int, sys.argv[1:]):
        pid = os.fork()
        if pid == 0:  # a forked child starts its own ru_maxrss at its RSS at fork
            data = make_data([{seq_len}] * n, seed=n)
            with open("/proc/self/statm") as f:
                before = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            learner.forward_backward(data, "importance_sampling")
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            print("PEAK_DELTA", n, peak - before, flush=True)
            os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0
""")


def peak_deltas(tiny_model_path, counts: list[int], seq_len: int) -> dict[int, int]:
    """{n: highest RSS during forward_backward on n datums of seq_len tokens minus the RSS just before}, budget =
    seq_len (one datum per pass). One process loads the model and warms up, then forks a child per measurement:
    each child's ru_maxrss is its own, the kernel's exact high-water mark (no sampling that could miss a spike).
    glibc's mmap threshold is pinned at 1 MiB so that freed tensors go back to the OS and RSS follows live
    memory, not the allocator's high-water mark."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(2**20), OMP_NUM_THREADS="1")
    script = PEAK_SCRIPT.format(root=ROOT, path=tiny_model_path, seq_len=seq_len)
    proc = subprocess.run([sys.executable, "-c", script, *map(str, counts)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {int(n): int(d) for _, n, d in (line.split() for line in proc.stdout.splitlines()
                                           if line.startswith("PEAK_DELTA"))}


def test_peak_memory_does_not_grow_with_the_number_of_datums(tiny_model_path):
    peaks = peak_deltas(tiny_model_path, [4, 16], seq_len=2048)
    # One 2048-token pass of the tiny model holds ~60 MiB of activations and temporaries; keeping every pass's
    # graph (or running the batch as one pass) would make the 16-datum peak several times the 4-datum one.
    assert peaks[4] > 30 * 2**20, peaks
    assert peaks[16] <= 1.3 * peaks[4], {n: round(d / 2**20, 1) for n, d in peaks.items()}
