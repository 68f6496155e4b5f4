"""The unmodified official SDK 0.38 against `ttt serve` (HF sampler) gives the same numbers as the in-process
backend for the same seeded calls: every built-in loss, optim_step, sampling, compute_logprobs, checkpoints."""

from __future__ import annotations

import pytest
from tinker import types

from shim import make_service_client
from tests.shim.conftest import sdk_client
from tests.shim.helpers import PROMPT, assert_close, data_for, logprob_lists, rl_datum, sft_datum

LOSSES = ["cross_entropy", "importance_sampling", "ppo", "cispo", "dro"]
ADAM = types.AdamParams(learning_rate=1e-2, grad_clip_norm=5.0)


@pytest.fixture
def backends(hf_engine, hf_server):
    local, remote = make_service_client("local", engine=hf_engine), sdk_client(hf_server)
    yield {"local": local, "served": remote}
    local.close()
    remote.close("success")


@pytest.mark.parametrize("loss_fn", LOSSES)
def test_each_loss_forward_backward_and_optim_step_match(backends, loss_fn):
    got = {}
    for name, client in backends.items():
        training = client.create_lora_training_client(base_model="tiny", rank=8, seed=3).result()
        data = data_for(loss_fn)
        fb_future = training.forward_backward(data, loss_fn)  # submitted back to back, as the SDK idiom
        opt_future = training.optim_step(ADAM)
        fb, opt = fb_future.result(), opt_future.result()
        after = training.forward(data, loss_fn).result()
        got[name] = (fb, opt, after)
    (fb_l, opt_l, after_l), (fb_s, opt_s, after_s) = got["local"], got["served"]
    assert fb_s.loss_fn_output_type == "ArrayRecord"
    assert set(fb_s.metrics) == set(fb_l.metrics) and "loss:sum" in fb_s.metrics
    assert_close(fb_s.metrics["loss:sum"], fb_l.metrics["loss:sum"])
    assert_close(logprob_lists(fb_s), logprob_lists(fb_l))
    assert [len(x) for x in logprob_lists(fb_s)] == [d.model_input.length for d in data_for(loss_fn)]
    assert_close(opt_s.metrics["grad_norm:mean"], opt_l.metrics["grad_norm:mean"])
    assert_close(logprob_lists(after_s), logprob_lists(after_l))
    assert logprob_lists(after_s) != logprob_lists(fb_s), "optim_step did not change the weights"


def test_sampling_checkpoints_and_resume_match(backends):
    got = {}
    for name, client in backends.items():
        training = client.create_lora_training_client(base_model="tiny", rank=8, seed=1).result()
        training.forward_backward([sft_datum()], "cross_entropy")
        training.optim_step(ADAM).result()
        sampler = training.save_weights_and_get_sampling_client().result()
        params = types.SamplingParams(max_tokens=6, seed=11, temperature=1.0)
        resp = sampler.sample(types.ModelInput.from_ints(PROMPT), 3, params, include_prompt_logprobs=True).result()
        first = resp.sequences[0]
        scored = sampler.compute_logprobs(types.ModelInput.from_ints(PROMPT + first.tokens)).result()
        # the learner scores the sampled tokens like the sampler did: the sampler serves the trained adapter
        full = PROMPT + first.tokens
        learner_lp = training.forward([types.Datum(model_input=types.ModelInput.from_ints(full[:-1]), loss_fn_inputs={
            "target_tokens": full[1:], "weights": [1.0] * (len(full) - 1)})], "cross_entropy").result()
        assert_close(learner_lp.loss_fn_outputs[0]["logprobs"].tolist()[len(PROMPT) - 1:], first.logprobs, 1e-4)
        named = training.save_weights_for_sampler("named").result().path
        named_resp = client.create_sampling_client(model_path=named).result().sample(
            types.ModelInput.from_ints(PROMPT), 3, params).result()
        state = training.save_state("ckpt").result().path
        resumed = client.create_training_client_from_state_with_optimizer(state).result()
        steps = []
        for tc in (training, resumed):
            fb = tc.forward_backward([rl_datum()], "importance_sampling")
            opt = tc.optim_step(ADAM)
            steps.append((fb.result().metrics["loss:sum"], opt.result().metrics["grad_norm:mean"],
                          logprob_lists(tc.forward([rl_datum()], "importance_sampling").result())))
        assert_close(steps[1], steps[0])  # resumed with Adam moments continues exactly like the original
        got[name] = (resp, scored, named, named_resp, state, steps[0])
    (resp_l, scored_l, named_l, named_resp_l, state_l, step_l) = got["local"]
    (resp_s, scored_s, named_s, named_resp_s, state_s, step_s) = got["served"]
    assert [s.tokens for s in resp_s.sequences] == [s.tokens for s in resp_l.sequences]
    assert_close([s.logprobs for s in resp_s.sequences], [s.logprobs for s in resp_l.sequences])
    assert resp_s.prompt_logprobs[0] is None and len(resp_s.prompt_logprobs) == len(PROMPT)
    assert_close(resp_s.prompt_logprobs, resp_l.prompt_logprobs)
    assert len({s.sequence_id for s in resp_s.sequences}) == 3
    assert_close(scored_s, scored_l)
    assert_close(scored_s[:len(PROMPT)], resp_s.prompt_logprobs, 1e-5)
    assert [s.tokens for s in named_resp_s.sequences] == [s.tokens for s in resp_s.sequences]
    assert named_s.startswith("tinker://") and named_s.endswith("/sampler_weights/named")
    assert state_s.endswith("/weights/ckpt") and ":train:" in state_s
    assert_close(step_s, step_l)


def test_get_info_names_a_local_tokenizer(backends, tiny_model_path):
    training = backends["served"].create_lora_training_client(base_model="tiny", rank=8).result()
    info = training.get_info()
    assert info.model_data.tokenizer_id == tiny_model_path and info.lora_rank == 8
    assert training.get_tokenizer().encode("hello")  # resolves offline from the local path


def test_sdk_polls_again_after_a_long_poll_times_out(hf_engine, backends):
    """A long poll that times out (the operation still running) answers try_again; the SDK 0.38 polls again at
    once and gets the same numbers as the in-process backend. long_poll_s=1 ms: every poll of a forward_backward
    or a sample times out at least once."""
    from shim.server import start_server
    from tests.shim.conftest import API_KEY

    server, _ = start_server(hf_engine, API_KEY, long_poll_s=0.001)
    client = sdk_client(server)
    try:
        got = {}
        for name, service in (("local", backends["local"]), ("served", client)):
            training = service.create_lora_training_client(base_model="tiny", rank=8, seed=5).result()
            fb_future = training.forward_backward(data_for("importance_sampling"), "importance_sampling")
            opt_future = training.optim_step(ADAM)
            fb, opt = fb_future.result(), opt_future.result()
            sampler = training.save_weights_and_get_sampling_client().result()
            resp = sampler.sample(types.ModelInput.from_ints(PROMPT), 2,
                                  types.SamplingParams(max_tokens=8, seed=3)).result()
            got[name] = (logprob_lists(fb), opt.metrics["grad_norm:mean"], [s.tokens for s in resp.sequences])
        assert_close(got["served"][0], got["local"][0])
        assert_close(got["served"][1], got["local"][1])
        assert got["served"][2] == got["local"][2]
        polls = server.api.metrics.requests.labels("retrieve_future", "POST", "200")._value.get()
        assert polls > 4, f"{polls} polls for 4 operations: no long poll timed out"
    finally:
        client.close("success")
        server.shutdown()
        server.server_close()
