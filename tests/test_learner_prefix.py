"""Shared-prefix passes: groups found and planned as hand-worked examples say, and forward_backward with
sharing equals it without (loss, logprobs, gradients) for every loss, mixed prompt lengths, lone datums,
members whose prefix targets differ, top-K cross-entropy, groups split by a small token budget, and under
gradient checkpointing (which replays the layers that hold the prefix's KV cache)."""

import pytest
import torch
from tinker import types

from trainer.learner import LoRALearner, LoraSpec
from trainer.learner.prefix import PrefixGroup, find_groups, pass_cost, plan_shared, shard_groups
from tolerances import grad_atol, logprob_tol, loss_tol, weight_scale

P1 = list(range(100, 120))  # 20 tokens
P2 = list(range(300, 317))  # 17 tokens


def test_find_groups_by_hand():
    tokens = [P1 + [1, 2], P2 + [5], P1 + [3], [7] * 30, P1 + [1, 9, 9], P2 + [6, 6]]
    groups = {tuple(g.members): g.shared for g in find_groups(tokens, min_shared=16)}
    # P1 members share 20 tokens, except that [1, 2] and [1, 9, 9] share 21: the group's S is the minimum
    assert groups == {(0, 4, 2): 20, (1, 5): 17, (3,): 29}  # members in token order
    # a member that is itself the prefix keeps one token of its own (S < its length)
    groups = find_groups([P1, P1 + [4, 4]], min_shared=16)
    assert [(g.members, g.shared) for g in groups] == [([0, 1], 19)]
    # below min_shared nothing is grouped
    assert all(len(g.members) == 1 for g in find_groups([P2[:10] + [1], P2[:10] + [2]], min_shared=16))


def test_plan_shared_by_hand():
    lengths = [30, 30, 25, 40]
    g = PrefixGroup([0, 1, 2], 20)
    # prefix 20 + 3 members x longest suffix 10 = 50 tokens
    assert pass_cost([g], lengths) == 50
    lone = PrefixGroup([3], 39)
    assert pass_cost([g, lone], lengths) == 2 * 39 + 4 * 10
    assert [[x.members for x in p] for p in plan_shared([g, lone], lengths, 200)] == [[[0, 1, 2], [3]]]
    # budget 40: the group is split into chunks of two (20 + 2 x 10) and one; the lone datum needs 40
    passes = plan_shared([g, lone], lengths, 40)
    assert sorted(sorted(m for x in p for m in x.members) for p in passes) == [[0, 1], [2], [3]]
    assert all(pass_cost(p, lengths) <= 40 for p in passes)
    # the prefix's KV repeated for 3 members at 0.5 tokens a position: 50 + 0.5 x 3 x 20
    assert pass_cost([g], lengths, kv_ratio=0.5) == 80
    assert [[x.members for x in p] for p in plan_shared([g], lengths, 79, kv_ratio=0.5)] == [[[0, 1]], [[2]]]


def _datum(tokens, loss_fn, g, prompt_len, top_k=False):
    n = len(tokens) - 1
    adv = [0.0] * (prompt_len - 1) + torch.randn(n - prompt_len + 1, generator=g).tolist()
    inputs = {"target_tokens": tokens[1:]}
    if loss_fn == "cross_entropy":
        if top_k:  # (N, 2) targets and weights
            inputs["target_tokens"] = types.TensorData.from_torch(
                torch.stack([torch.tensor(tokens[1:]), torch.randint(3, 400, (n,), generator=g)], 1))
            inputs["weights"] = types.TensorData.from_torch(torch.rand(n, 2, generator=g))
        else:
            inputs["weights"] = [abs(a) for a in adv]
    else:
        inputs["logprobs"] = [0.0] * (prompt_len - 1) + (-torch.rand(n - prompt_len + 1, generator=g) * 3).tolist()
        inputs["advantages"] = adv
    return types.Datum(model_input=types.ModelInput.from_ints(tokens[:-1]), loss_fn_inputs=inputs)


def _data(loss_fn, top_k=False):
    g = torch.Generator().manual_seed(7)
    data = []
    for prompt in (P1, P2, P1[:18] + [5, 6]):  # three prompts, two lengths; the third shares 18 with P1
        for k in range(3):
            completion = torch.randint(3, 400, (4 + 2 * k,), generator=g).tolist()
            data.append(_datum(prompt + completion, loss_fn, g, len(prompt), top_k))
    data.append(_datum([9] * 12 + [4, 5, 6], loss_fn, g, 12, top_k))  # a lone datum
    if loss_fn == "importance_sampling":  # same prompt, different target at a prefix position: not deduped
        odd = _datum(P2 + [1, 2, 3], loss_fn, g, len(P2))
        odd.loss_fn_inputs["target_tokens"] = [P2[1] + 1] + list(P2[2:]) + [1, 2, 3]
        data.append(odd)
    return data


def _step(learner, data, loss_fn):
    out = learner.forward_backward(data, loss_fn)
    grads = {n: p.grad.clone() for n, p in learner.model.named_parameters() if p.requires_grad}
    learner.optimizer.zero_grad(set_to_none=True)
    return out, grads


@pytest.fixture(scope="module")
def learners(tiny_model_path):
    make = lambda sharing, budget=8192: LoRALearner(  # noqa: E731 - same seed: same LoRA init
        tiny_model_path, LoraSpec(rank=4, seed=3), prefix_sharing=sharing, micro_batch_tokens=budget)
    plain, shared, small = make(False), make(True), make(True, budget=48)
    checkpointed = LoRALearner(tiny_model_path, LoraSpec(rank=4, seed=3), prefix_sharing=True,
                               gradient_checkpointing=True)
    with torch.no_grad():  # B starts at 0: make the adapter matter, identically in all of them
        for learner in (plain, shared, small, checkpointed):
            for name, p in learner.model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.05)
    return plain, shared, small, checkpointed


@pytest.mark.parametrize("loss_fn,top_k", [("importance_sampling", False), ("ppo", False), ("cispo", False),
                                           ("dro", False), ("cross_entropy", False), ("cross_entropy", True)])
def test_shared_prefix_passes_equal_plain_passes(learners, loss_fn, top_k):
    plain, shared, small, checkpointed = learners
    data = _data(loss_fn, top_k)
    assert shared._prefix_plan([list(d.model_input.to_ints()) for d in data]) is not None
    reference, reference_grads = _step(plain, data, loss_fn)
    for learner in (shared, small, checkpointed):  # checkpointing replays layers that hold the prefix cache
        out, grads = _step(learner, data, loss_fn)
        lps = torch.cat([o["logprobs"].flatten() for o in reference["loss_fn_outputs"]])
        assert out["metrics"]["loss:sum"] == pytest.approx(reference["metrics"]["loss:sum"], abs=loss_tol(lps, weight_scale(data, loss_fn == "dro")))
        for a, b in zip(out["loss_fn_outputs"], reference["loss_fn_outputs"]):
            assert a["logprobs"].shape == b["logprobs"].shape
            torch.testing.assert_close(a["logprobs"], b["logprobs"], rtol=0, atol=logprob_tol(b["logprobs"]))
        for name, g in reference_grads.items():
            torch.testing.assert_close(grads[name], g, rtol=0, atol=grad_atol(g), msg=name)
    assert len(small._prefix_plan([list(d.model_input.to_ints()) for d in data])) > 2  # the budget split groups


def test_prefix_sharing_refuses_what_it_cannot_do(tiny_model_path):
    with pytest.raises(ValueError, match="prefix_sharing needs .* no packing"):
        LoRALearner(tiny_model_path, LoraSpec(rank=4), prefix_sharing=True, packing=True)
    assert LoRALearner(tiny_model_path, LoraSpec(rank=4), packing=True).prefix_sharing is False  # auto: off
    assert LoRALearner(tiny_model_path, LoraSpec(rank=4), gradient_checkpointing=True).prefix_sharing is True


def test_kv_ratio_from_configs():
    from types import SimpleNamespace

    from trainer.learner.prefix import kv_ratio

    tiny = SimpleNamespace(num_attention_heads=4, num_key_value_heads=2, hidden_size=128)  # head_dim 32
    assert kv_ratio(tiny) == 1.0
    qwen3_4b = SimpleNamespace(num_attention_heads=32, num_key_value_heads=8, hidden_size=2560, head_dim=128)
    assert kv_ratio(qwen3_4b) == 0.8


def test_shard_groups_keeps_groups_whole_where_the_balance_allows():
    lengths = [10] * 8 + [10] * 8
    groups = [PrefixGroup(list(range(8)), 5), PrefixGroup(list(range(8, 16)), 5)]
    assert shard_groups(groups, lengths, 2) == [list(range(8)), list(range(8, 16))]  # one group per rank
    # one group on two ranks: split round-robin, 4 and 4
    assert shard_groups(groups[:1], lengths[:8], 2) == [[0, 2, 4, 6], [1, 3, 5, 7]]
    # eight small groups on two ranks: four whole groups each
    small = [PrefixGroup([2 * g, 2 * g + 1], 5) for g in range(8)]
    shards = shard_groups(small, lengths, 2)
    assert sorted(len(s) for s in shards) == [8, 8]
    assert all({2 * g, 2 * g + 1} <= set(s) or not ({2 * g, 2 * g + 1} & set(s)) for s in shards for g in range(8))
    assert shard_groups([PrefixGroup([0], 3)], [4], 3) == [[0], [], []]  # more ranks than datums: the others idle

