"""Concurrent sample requests for the same weights and parameters become one engine call, and each keeps its
own seed: the results equal the same requests sent one at a time (tokens exactly; logprobs up to the float
rounding of a bigger batched matmul)."""

import numpy as np

from tinker import types

from shim.factory import make_service_client


def test_concurrent_requests_are_coalesced_and_keep_their_seeds(hf_engine):
    service = make_service_client("local", engine=hf_engine)
    training = service.create_lora_training_client(base_model="tiny", rank=4, seed=1).result()
    sampling = training.save_weights_and_get_sampling_client().result()
    prompts = [types.ModelInput.from_ints([1, 87, 85, 71 + g]) for g in range(8)]

    def params(g):
        return types.SamplingParams(max_tokens=12, seed=100 + g, temperature=1.0)

    one_by_one = [sampling.sample(p, 4, params(g)).result() for g, p in enumerate(prompts)]
    calls = hf_engine.pool.engine_calls
    futures = [sampling.sample(p, 4, params(g)) for g, p in enumerate(prompts)]  # all in flight at once
    together = [f.result() for f in futures]
    assert hf_engine.pool.engine_calls - calls <= 4  # 8 requests, a handful of engine calls
    for a, b in zip(one_by_one, together):
        assert [s.tokens for s in a.sequences] == [s.tokens for s in b.sequences]
        for x, y in zip(a.sequences, b.sequences):
            np.testing.assert_allclose(x.logprobs, y.logprobs, rtol=0, atol=1e-4)
    mixed = [sampling.sample(prompts[0], 2, params(0)), sampling.sample(prompts[1], 3, params(1))]
    assert [len(f.result().sequences) for f in mixed] == [2, 3]  # different n: never merged
    service.close()
