"""Runs under the SDK 0.7.0 virtualenv (scripts/setup_tinker07.sh) against a `ttt serve` server whose url and
key come from TINKER_BASE_URL / TINKER_API_KEY; prints one JSON object with every number it got, for the test
to compare with the in-process backend. Uses only 0.7.0's API (JSON wire protocol)."""

import json
import sys

import tinker
from tinker import types

assert tinker.__version__ == "0.7.0", tinker.__version__
prompt, completion = [5, 17, 42, 9, 101, 33], [7, 88, 13, 250]
seq = prompt + completion
n_prompt = len(prompt) - 1
datum = types.Datum(model_input=types.ModelInput.from_ints(seq[:-1]), loss_fn_inputs={
    "target_tokens": seq[1:], "weights": [0.0] * n_prompt + [1.0] * len(completion)})
rl = types.Datum(model_input=types.ModelInput.from_ints(seq[:-1]), loss_fn_inputs={
    "target_tokens": seq[1:], "logprobs": [0.0] * n_prompt + [-5.0] * len(completion),
    "advantages": [0.0] * n_prompt + [1.0] * len(completion)})

service = tinker.ServiceClient()
training = service.create_lora_training_client(base_model="tiny", rank=8, seed=3)
out = {"model_id": training.model_id}
fb = training.forward_backward([datum], "cross_entropy").result()
out["ce_loss"], out["ce_logprobs"] = fb.metrics["loss:sum"], fb.loss_fn_outputs[0]["logprobs"].tolist()
out["grad_norm"] = training.optim_step(types.AdamParams(learning_rate=1e-2)).result().metrics["grad_norm:mean"]
is_fb = training.forward_backward([rl], "importance_sampling").result()
out["is_loss"] = is_fb.metrics["loss:sum"]
out["grad_norm2"] = training.optim_step(types.AdamParams(learning_rate=1e-2)).result().metrics["grad_norm:mean"]
out["fwd_logprobs"] = training.forward([datum], "cross_entropy").result().loss_fn_outputs[0]["logprobs"].tolist()
sampler = training.save_weights_and_get_sampling_client("s07")
resp = sampler.sample(types.ModelInput.from_ints(prompt), 2, types.SamplingParams(max_tokens=5, seed=7)).result()
out["sample_tokens"] = [s.tokens for s in resp.sequences]
out["sample_logprobs"] = [s.logprobs for s in resp.sequences]
out["state_path"] = training.save_state("s07state").result().path
json.dump(out, sys.stdout)
