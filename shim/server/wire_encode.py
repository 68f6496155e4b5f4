"""Engine results -> response bodies: protobuf for SDK >= 0.25 (it sends `Accept: application/x-protobuf` for
ForwardBackward and Sample results) and JSON otherwise (TINKER_API.md 7.3, 7.5)."""

from __future__ import annotations

import json
import math

import numpy as np

PROTO = "application/x-protobuf"
JSON = "application/json"


def _finite(value):
    """NaN / inf -> "NaN" / "Infinity" / "-Infinity" strings: bare NaN is not JSON (strict parsers reject the
    whole reply), while the SDK's pydantic models read these strings back as the float they stand for."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def json_body(value) -> tuple[str, bytes]:
    try:
        return JSON, json.dumps(value, allow_nan=False).encode()
    except ValueError:  # a non-finite float somewhere (rare: a diverged loss): the slow path
        return JSON, json.dumps(_finite(value), allow_nan=False).encode()


def forward_backward(result: dict, as_proto: bool) -> tuple[str, bytes]:
    outputs = [{k: v.float().numpy().astype(np.float32, copy=False) for k, v in out.items()}
               for out in result["loss_fn_outputs"]]
    metrics = {k: float(v) for k, v in result["metrics"].items()}
    if not as_proto:
        return json_body({"loss_fn_output_type": "ArrayRecord", "metrics": metrics, "loss_fn_outputs": [
            {k: {"data": a.reshape(-1).tolist(), "dtype": "float32", "shape": list(a.shape)} for k, a in out.items()}
            for out in outputs]})
    from tinker.proto import tinker_public_pb2 as pb

    msg = pb.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord")
    record = msg.loss_fn_outputs.add(type_tag="ArrayRecord", num_datums=len(outputs))
    for key in (outputs[0] if outputs else {}):
        arrays = [out[key] for out in outputs]
        offsets = np.cumsum([0] + [a.nbytes for a in arrays]).astype(np.int64)
        field = record.fields[key]
        field.data = b"".join(a.tobytes() for a in arrays)
        field.offsets = offsets.tobytes()
        field.dtype = pb.DTYPE_FLOAT32
        field.trailing_shape.extend(arrays[0].shape[1:])
    for k, v in metrics.items():
        msg.metrics[k] = v
    return PROTO, msg.SerializeToString()


def sample(seqs, prompt_lps, as_proto: bool) -> tuple[str, bytes]:
    if not as_proto:
        return json_body({"type": "sample", "prompt_logprobs": prompt_lps, "sequences": [
            {"stop_reason": s.stop_reason, "tokens": list(s.tokens), "logprobs": list(s.logprobs)} for s in seqs]})
    from tinker.proto import tinker_public_pb2 as pb

    msg = pb.SampleResponse()
    for s in seqs:
        msg.sequences.add(stop_reason=pb.STOP_REASON_LENGTH if s.stop_reason == "length" else pb.STOP_REASON_STOP,
                          tokens=np.asarray(s.tokens, dtype="<i4").tobytes(),
                          logprobs=np.asarray(s.logprobs, dtype="<f4").tobytes())
    if prompt_lps is not None:
        msg.prompt_logprobs = np.asarray([math.nan if x is None else x for x in prompt_lps], dtype="<f4").tobytes()
    return PROTO, msg.SerializeToString()
