"""`ttt serve` over the session's real vLLM engine, driven by the official SDK 0.38: a trained adapter is
hot-loaded into vLLM, seeded samples equal the in-process backend's, and vLLM's logprobs of the sampled tokens
match the learner's (so importance ratios start at 1)."""

from __future__ import annotations

from tinker import types

from shim import make_service_client
from tests.shim.conftest import sdk_client
from tests.shim.helpers import PROMPT, assert_close, sft_datum

ADAM = types.AdamParams(learning_rate=5e-2)


def _train_and_sample(client):
    training = client.create_lora_training_client(base_model="tiny", rank=8, seed=5).result()
    training.forward_backward([sft_datum()], "cross_entropy")
    training.optim_step(ADAM).result()
    sampler = training.save_weights_and_get_sampling_client().result()
    resp = sampler.sample(types.ModelInput.from_ints(PROMPT), 2, types.SamplingParams(max_tokens=8, seed=21),
                          include_prompt_logprobs=True).result()
    base = client.create_sampling_client(base_model="tiny").result()
    base_lps = base.compute_logprobs(types.ModelInput.from_ints(PROMPT)).result()
    scored = []
    for seq in resp.sequences:
        full = PROMPT + seq.tokens
        out = training.forward([types.Datum(model_input=types.ModelInput.from_ints(full[:-1]), loss_fn_inputs={
            "target_tokens": full[1:], "weights": [1.0] * (len(full) - 1)})], "cross_entropy").result()
        scored.append(out.loss_fn_outputs[0]["logprobs"].tolist()[len(PROMPT) - 1:])
    return resp, base_lps, scored


def test_vllm_serves_trained_adapter_like_local(vllm_server, vllm_engine):
    remote = sdk_client(vllm_server)
    resp_s, base_s, scored_s = _train_and_sample(remote)
    remote.close("success")
    local = make_service_client("local", engine=vllm_engine)
    resp_l, base_l, scored_l = _train_and_sample(local)
    local.close()
    assert [s.tokens for s in resp_s.sequences] == [s.tokens for s in resp_l.sequences]
    assert_close([s.logprobs for s in resp_s.sequences], [s.logprobs for s in resp_l.sequences], 1e-5)
    assert_close(resp_s.prompt_logprobs, resp_l.prompt_logprobs, 1e-5)
    for seq, learner_lps in zip(resp_s.sequences, scored_s):
        assert_close(seq.logprobs, learner_lps, 1e-3)
    # the adapter changed the model: the trained prompt logprobs differ from the base model's
    assert max(abs(a - b) for a, b in zip(resp_s.prompt_logprobs[1:], base_s[1:])) > 1e-3
    assert_close(base_s, base_l, 1e-5)
