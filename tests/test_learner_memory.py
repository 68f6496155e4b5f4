"""Memory and speed options change nothing but memory and speed: gradient checkpointing gives identical
gradients, packing / padding / any token budget give the same logprobs and gradients, the memory-light
target-logprob op equals log_softmax + gather bit for bit, and bf16 runs (fp32 stays the CPU default)."""

import pytest
import torch

from trainer.datums import rollout_datum
from trainer.learner import LoRALearner, LoraSpec, resolve_dtype
from trainer.learner.inputs import plan_micro_batches, shard_by_tokens
from trainer.learner.logprobs import target_logprobs
from tolerances import grad_rel, logprob_tol, loss_tol

PROMPT = [1, 87, 85, 71]
DATA = [rollout_datum(PROMPT, [326 + i, 85, 297, 86, 19, 40, 41][: 2 + i], [-6.0] * (2 + i), 1.0 - 0.4 * i)
        for i in range(5)]
ADV_SCALE = max(1.0, max(abs(1.0 - 0.4 * i) for i in range(5)))


def run(tiny_model_path, **options):
    learner = LoRALearner(tiny_model_path, LoraSpec(rank=4, seed=3), **options)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for name, p in learner.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    out = learner.forward_backward(DATA, "importance_sampling")
    return learner, out, {n: p.grad.clone() for n, p in learner.named_params}


@pytest.fixture(scope="module")
def reference(tiny_model_path):
    return run(tiny_model_path)  # packed, one micro-batch


def test_gradient_checkpointing_gives_identical_gradients(tiny_model_path, reference):
    learner, out, grads = run(tiny_model_path, gradient_checkpointing=True)
    assert learner.model.base_model.model.model.gradient_checkpointing  # really on
    _, ref_out, ref_grads = reference
    assert out["metrics"] == ref_out["metrics"]
    assert all(torch.equal(grads[n], ref_grads[n]) for n in grads)


@pytest.mark.parametrize("options", [{"packing": False}, {"micro_batch_tokens": 12},
                                     {"micro_batch_tokens": 1}, {"packing": False, "micro_batch_tokens": 20}])
def test_packing_and_token_budget_do_not_change_results(tiny_model_path, reference, options):
    _, out, grads = run(tiny_model_path, **options)
    _, ref_out, ref_grads = reference
    ref_lps = torch.cat([o["logprobs"] for o in ref_out["loss_fn_outputs"]])
    # the loss sums terms of both signs: its rounding is that of the terms (loss_tol), not of the small total
    assert out["metrics"]["loss:sum"] == pytest.approx(ref_out["metrics"]["loss:sum"], abs=loss_tol(ref_lps, ADV_SCALE))
    for a, b in zip(out["loss_fn_outputs"], ref_out["loss_fn_outputs"]):
        assert a["logprobs"].shape == b["logprobs"].shape
        assert torch.allclose(a["logprobs"], b["logprobs"], rtol=0, atol=logprob_tol(b["logprobs"]))
    for n in grads:
        assert float((grads[n] - ref_grads[n]).norm()) <= grad_rel() * float(ref_grads[n].norm()) + 1e-7, n


def test_token_budget_plans():
    lengths = [9, 3, 14, 5, 5, 30]
    packed = plan_micro_batches(lengths, 16, packed=True)
    padded = plan_micro_batches(lengths, 16, packed=False)
    for plan in (packed, padded):
        assert sorted(i for group in plan for i in group) == list(range(len(lengths)))
        assert [5] in plan  # longer than the budget: a pass of its own
    assert all(sum(lengths[i] for i in g) <= 16 for g in packed if g != [5])
    assert all(max(lengths[i] for i in g) * len(g) <= 16 for g in padded if g != [5])
    assert plan_micro_batches([10, 5, 1], 16, packed=True) == [[0, 1, 2]]  # no padding: fewer passes
    assert plan_micro_batches([10, 5, 1], 16, packed=False) == [[0], [1, 2]]


def test_shards_are_balanced_and_cover_every_datum():
    lengths = [30, 3, 14, 5, 5, 9, 22]
    shards = shard_by_tokens(lengths, 2)
    assert sorted(shards[0] + shards[1]) == list(range(len(lengths)))
    loads = [sum(lengths[i] for i in s) for s in shards]
    assert abs(loads[0] - loads[1]) <= max(lengths) and shards == shard_by_tokens(lengths, 2)
    assert shard_by_tokens([4], 3) == [[0], [], []]  # more ranks than datums: the others idle


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k", [None, 3])
def test_target_logprobs_equal_log_softmax_gather_bit_for_bit(dtype, k):
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(2500, 300, generator=g) * 3).to(dtype)  # > one 1024-row chunk
    targets = torch.randint(0, 300, (2500,) if k is None else (2500, k), generator=g)
    weights = torch.randn(targets.shape, generator=g)
    ours_in = logits.clone().requires_grad_(True)
    ours = target_logprobs(ours_in, targets)
    (ours * weights).sum().backward()
    ref_in = logits.clone().requires_grad_(True)
    ref = torch.log_softmax(ref_in.float(), -1).gather(-1, targets if k else targets[:, None])
    ref = ref if k else ref[:, 0]
    (ref * weights).sum().backward()
    assert ours.dtype == torch.float32 and torch.equal(ours, ref)
    assert torch.equal(ours_in.grad, ref_in.grad)


def test_dtype_auto_is_fp32_on_cpu_and_bf16_on_gpu(tiny_model_path):
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda:0") == torch.bfloat16
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    learner = LoRALearner(tiny_model_path, LoraSpec(rank=4), dtype=torch.bfloat16)
    assert learner.model.base_model.model.lm_head.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in learner.params)  # PEFT keeps LoRA weights in fp32
    out = learner.forward_backward(DATA[:2], "importance_sampling")
    assert out["loss_fn_outputs"][0]["logprobs"].dtype == torch.float32
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in learner.params)


def test_packing_is_on_only_with_a_varlen_attention_kernel(tiny_model_path):
    from trainer.learner import LoRALearner, LoraSpec

    assert not LoRALearner(tiny_model_path, LoraSpec(rank=2)).packing  # SDPA on CPU: padded micro-batches
    assert LoRALearner(tiny_model_path, LoraSpec(rank=2), packing=True).packing  # asked for explicitly
