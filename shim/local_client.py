"""The in-process backend: ServiceClient / TrainingClient / SamplingClient with the SDK's method names,
argument names and result types, running on a local Engine (learner + sampler in this process).

Like the SDK, every network-shaped method returns a future at once and one TrainingClient's requests run in
submission order (they take seq_ids 1, 2, 3, ... on the model's queue).
"""

from __future__ import annotations

import itertools
import threading
from typing import Any, Sequence

from tinker import types

from shim import sdk_results
from shim.engine import Engine
from shim.futures import ClientFuture, ShimFuture
from shim.training_models import LoraRequest


def _adam(params: Any):
    from trainer.learner import AdamParams

    if params is None:
        return AdamParams()
    return AdamParams(**{f: getattr(params, f) for f in AdamParams.__dataclass_fields__})


class LocalServiceClient:
    def __init__(self, engine: Engine, user_metadata: dict | None = None):
        self.engine = engine
        self.session_id = engine.create_session(user_metadata)
        self._model_seq = itertools.count(0)
        self._sampling_seq = itertools.count(0)
        self._lock = threading.Lock()

    def _next(self, counter) -> int:
        with self._lock:
            return next(counter)

    def create_lora_training_client(self, base_model: str, rank: int = 32, seed: int | None = None,
                                    train_mlp: bool = True, train_attn: bool = True, train_unembed: bool = True,
                                    user_metadata: dict | None = None, optimizer: Any = None) -> ClientFuture:
        lora = LoraRequest(rank=rank, seed=seed, train_mlp=train_mlp, train_attn=train_attn,
                           train_unembed=train_unembed)
        model_id = self.engine.create_model(self.session_id, self._next(self._model_seq), base_model, lora,
                                            user_metadata)
        return ClientFuture.of(LocalTrainingClient(self, model_id))

    def create_training_client_from_state(self, path: str, base_model: str | None = None,
                                          **_ignored) -> ClientFuture:
        """Weights only; a fresh optimizer."""
        return self._from_state(path, False, base_model)

    def create_training_client_from_state_with_optimizer(self, path: str, base_model: str | None = None,
                                                         **_ignored) -> ClientFuture:
        return self._from_state(path, True, base_model)

    def _from_state(self, path: str, optimizer: bool, base_model: str | None) -> ClientFuture:
        model_id = self.engine.create_model_from_state(self.session_id, self._next(self._model_seq), path,
                                                       optimizer, base_model)
        return ClientFuture.of(LocalTrainingClient(self, model_id))

    def create_sampling_client(self, model_path: str | None = None, base_model: str | None = None,
                               **_ignored) -> ClientFuture:
        if model_path is None and base_model is None:
            raise ValueError("pass model_path (tinker://...) or base_model")
        sampling_id = self.engine.create_sampling_session(self.session_id, self._next(self._sampling_seq),
                                                          model_path=model_path, base_model=base_model)
        return ClientFuture.of(LocalSamplingClient(self, sampling_id))

    async def create_lora_training_client_async(self, *args, **kwargs) -> "LocalTrainingClient":
        return self.create_lora_training_client(*args, **kwargs).result()

    async def create_sampling_client_async(self, *args, **kwargs) -> "LocalSamplingClient":
        return self.create_sampling_client(*args, **kwargs).result()

    def get_server_capabilities(self) -> types.GetServerCapabilitiesResponse:
        model = types.SupportedModel(model_name=self.engine.served_name)
        return types.GetServerCapabilitiesResponse(supported_models=[model])

    def close(self, status: str = "success", detail: str | None = None) -> None:
        self.engine.finish_session(self.session_id)

    def __enter__(self) -> "LocalServiceClient":
        return self

    def __exit__(self, exc_type, *_):
        self.close("success" if exc_type is None else "errored")


class LocalTrainingClient:
    def __init__(self, service: LocalServiceClient, model_id: str):
        self.service, self.engine, self.model_id = service, service.engine, model_id
        self._seq = itertools.count(1)
        self._lock = threading.Lock()

    def _submit(self, op, *args, convert=lambda x: x) -> ShimFuture:
        with self._lock:  # seq_id order == submission order
            return ShimFuture(self.engine.submit(self.model_id, next(self._seq), op, *args), convert)

    def forward_backward(self, data: Sequence[types.Datum], loss_fn: str,
                         loss_fn_config: dict | None = None) -> ShimFuture[types.ForwardBackwardOutput]:
        return self._submit(Engine.op_forward_backward, list(data), loss_fn, loss_fn_config, False,
                            convert=sdk_results.forward_backward_output)

    def forward(self, data: Sequence[types.Datum], loss_fn: str,
                loss_fn_config: dict | None = None) -> ShimFuture[types.ForwardBackwardOutput]:
        return self._submit(Engine.op_forward_backward, list(data), loss_fn, loss_fn_config, True,
                            convert=sdk_results.forward_backward_output)

    def forward_backward_custom(self, data: Sequence[types.Datum], loss_fn) -> ShimFuture[types.ForwardBackwardOutput]:
        def op(model, data):
            return model.learner.forward_backward_custom(data, loss_fn)
        return self._submit(op, list(data), convert=sdk_results.forward_backward_output)

    def optim_step(self, optim_params: Any = None, *, adam_params: Any = None) -> ShimFuture[types.OptimStepResponse]:
        return self._submit(Engine.op_optim_step, _adam(adam_params or optim_params),
                            convert=sdk_results.optim_step_response)

    def save_state(self, name: str, ttl_seconds: int | None = None, overwrite: bool = False,
                   user_metadata: dict | None = None) -> ShimFuture[types.SaveWeightsResponse]:
        return self._submit(self.engine.op_save_state, name, overwrite,
                            convert=lambda path: types.SaveWeightsResponse(path=path))

    def save_weights_for_sampler(self, name: str, ttl_seconds: int | None = None,
                                 user_metadata: dict | None = None) -> ShimFuture[types.SaveWeightsForSamplerResponse]:
        return self._submit(self.engine.op_save_for_sampler, name,
                            convert=lambda path: types.SaveWeightsForSamplerResponse(path=path))

    def save_weights_and_get_sampling_client(self, name: str | None = None, retry_config: Any = None,
                                             record_stability_info: bool = False,
                                             kind: str = "snapshot") -> ClientFuture:
        """Ephemeral weights for a new sampling client, in order after earlier requests."""
        seq = self.service._next(self.service._sampling_seq)
        return ClientFuture(self._submit(self.engine.op_save_ephemeral, seq, kind).future(),
                            lambda sampling_id: LocalSamplingClient(self.service, sampling_id))

    def create_sampling_client(self, model_path: str, **kwargs) -> ClientFuture:
        return self.service.create_sampling_client(model_path=model_path, **kwargs)

    def load_state(self, path: str) -> ShimFuture:
        return self._submit(self.engine.op_load_weights, path, False,
                            convert=lambda p: types.LoadWeightsResponse(path=p))

    def load_state_with_optimizer(self, path: str) -> ShimFuture:
        return self._submit(self.engine.op_load_weights, path, True,
                            convert=lambda p: types.LoadWeightsResponse(path=p))

    def get_info(self) -> types.GetInfoResponse:
        return types.GetInfoResponse.model_validate(self.engine.get_info(self.model_id))

    def get_tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.get_info().model_data.tokenizer_id)

    # The SDK's deprecated *_async forms: awaiting them gives the future.
    async def forward_backward_async(self, *args, **kwargs) -> ShimFuture:
        return self.forward_backward(*args, **kwargs)

    async def forward_async(self, *args, **kwargs) -> ShimFuture:
        return self.forward(*args, **kwargs)

    async def optim_step_async(self, *args, **kwargs) -> ShimFuture:
        return self.optim_step(*args, **kwargs)

    async def save_state_async(self, *args, **kwargs) -> ShimFuture:
        return self.save_state(*args, **kwargs)

    async def save_weights_for_sampler_async(self, *args, **kwargs) -> ShimFuture:
        return self.save_weights_for_sampler(*args, **kwargs)

    async def save_weights_and_get_sampling_client_async(self, *args, **kwargs) -> "LocalSamplingClient":
        return await self.save_weights_and_get_sampling_client(*args, **kwargs)


class LocalSamplingClient:
    def __init__(self, service: LocalServiceClient, sampling_session_id: str):
        self.service, self.engine = service, service.engine
        self.sampling_session_id = sampling_session_id
        self._seq = itertools.count(0)
        self._lock = threading.Lock()

    def sample(self, prompt: types.ModelInput, num_samples: int, sampling_params: types.SamplingParams,
               include_prompt_logprobs: bool = False, **_unsupported) -> ShimFuture[types.SampleResponse]:
        with self._lock:
            seq = next(self._seq)
        tokens = list(prompt.to_ints())
        params = sampling_params.model_dump()
        ids = [f"{self.sampling_session_id}:{seq}:{i}" for i in range(num_samples)]
        inner = self.engine.submit_sample(self.sampling_session_id, tokens, num_samples, params,
                                          include_prompt_logprobs)  # no thread waits per request
        return ShimFuture(inner, lambda r: sdk_results.sample_response(r[0], r[1], ids))

    def compute_logprobs(self, prompt: types.ModelInput) -> ShimFuture[list[float | None]]:
        """As the SDK: one sampled token with prompt logprobs; entry 0 is None."""
        future = self.sample(prompt, 1, types.SamplingParams(max_tokens=1), include_prompt_logprobs=True)
        return ShimFuture(future.future(), lambda r: r.prompt_logprobs)

    async def sample_async(self, *args, **kwargs) -> types.SampleResponse:
        return await self.sample(*args, **kwargs)

    async def compute_logprobs_async(self, prompt: types.ModelInput) -> list[float | None]:
        return await self.compute_logprobs(prompt)

    def get_tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.engine.model_path)

    def get_base_model(self) -> str:
        return self.engine.sampling_session(self.sampling_session_id)[0]
