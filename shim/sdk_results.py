"""Engine results -> the SDK's own result types (tinker.types), so callers see one vocabulary whichever backend
runs. Values go through float32 exactly as the wire does, so local and served results compare equal."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from tinker import types


def forward_backward_output(result: dict) -> types.ForwardBackwardOutput:
    outputs = [{key: types.TensorData.from_numpy(np.asarray(value.float().numpy(), dtype=np.float32))
                for key, value in out.items()} for out in result["loss_fn_outputs"]]
    return types.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord", loss_fn_outputs=outputs,
                                       metrics={k: float(v) for k, v in result["metrics"].items()})


def optim_step_response(metrics: dict | None) -> types.OptimStepResponse:
    return types.OptimStepResponse(metrics={k: float(v) for k, v in (metrics or {}).items()})


def prompt_logprobs_array(lps: Sequence[float | None] | None) -> np.ndarray | None:
    if lps is None:
        return None
    return np.asarray([np.nan if x is None else x for x in lps], dtype=np.float32)


def sample_response(seqs, prompt_lps, sequence_ids: Sequence[str]) -> types.SampleResponse:
    sequences = [types.SampledSequence(stop_reason=s.stop_reason, sequence_id=sid,
                                       tokens_np=np.asarray(s.tokens, dtype=np.int32),
                                       logprobs_np=np.asarray(s.logprobs, dtype=np.float32))
                 for s, sid in zip(seqs, sequence_ids)]
    return types.SampleResponse(sequences=sequences, prompt_logprobs_np=prompt_logprobs_array(prompt_lps))
