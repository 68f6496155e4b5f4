"""Request bodies -> plain values: JSON (SDK <= 0.24, e.g. 0.7.0) and protobuf ForwardBackwardRequest (>= 0.25).

Every malformed input raises BadRequest with a message naming the field; nothing here trusts the client.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch

_NUMPY = {"float32": np.float32, "int64": np.int64}


class BadRequest(ValueError):
    """-> HTTP 400 with this message."""


@dataclass
class WireDatum:
    """What LoRALearner needs of a Datum: token ids and tensors (it accepts lists for model_input)."""
    model_input: list[int]
    loss_fn_inputs: dict[str, torch.Tensor]


def _no_constants(name: str):
    raise BadRequest(f"body is not valid JSON: {name} is not a JSON number")


def parse_json(body: bytes) -> dict:
    try:
        value = json.loads(body or b"{}", parse_constant=_no_constants)
    except BadRequest:
        raise
    except RecursionError:  # e.g. 100k nested arrays: the C scanner recurses once per level
        raise BadRequest("body is not valid JSON: nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, and ints past Python's 4300-digit limit
        raise BadRequest(f"body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(value, dict):
        raise BadRequest("body must be a JSON object")
    return value


_MISSING = object()


def get(body: dict, name: str, kind: type | tuple, default=_MISSING):
    """body[name] checked against `kind` (None allowed only as a default)."""
    value = body.get(name, _MISSING)
    if value is _MISSING or (value is None and default is not _MISSING):
        if default is _MISSING:
            raise BadRequest(f"missing field {name!r}")
        return default
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
        raise BadRequest(f"field {name!r} has the wrong type ({type(value).__name__})")
    return value


def _int_list(values, what: str) -> list[int]:
    if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise BadRequest(f"{what} must be a list of integers")
    return values


def model_input_from_json(value) -> list[int]:
    if not isinstance(value, dict) or not isinstance(value.get("chunks"), list):
        raise BadRequest("model_input must be {'chunks': [...]}")
    tokens: list[int] = []
    for i, chunk in enumerate(value["chunks"]):
        if not isinstance(chunk, dict) or chunk.get("type", "encoded_text") != "encoded_text":
            raise BadRequest(f"model_input chunk {i}: only encoded_text chunks are supported")
        tokens += _int_list(chunk.get("tokens"), f"model_input chunk {i} tokens")
    return tokens


def tensor_from_json(value, what: str) -> torch.Tensor:
    if isinstance(value, list):  # plain lists are allowed by the SDK types
        return torch.as_tensor(np.asarray(value))
    if not isinstance(value, dict) or value.get("dtype") not in _NUMPY or not isinstance(value.get("data"), list):
        raise BadRequest(f"{what} must be TensorData {{'data': [...], 'dtype': 'float32'|'int64', 'shape'}}")
    if value.get("sparse_crow_indices") is not None:
        raise BadRequest(f"{what}: sparse TensorData is only supported in protobuf requests")
    try:
        array = np.asarray(value["data"], dtype=_NUMPY[value["dtype"]])
        if value.get("shape") is not None:
            array = array.reshape(_int_list(value["shape"], f"{what} shape"))
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"{what}: {exc}") from None
    return torch.from_numpy(array)


def datum_from_json(value, i: int) -> WireDatum:
    if not isinstance(value, dict):
        raise BadRequest(f"datum {i} must be an object")
    inputs = value.get("loss_fn_inputs") or {}
    if not isinstance(inputs, dict):
        raise BadRequest(f"datum {i}: loss_fn_inputs must be an object")
    return WireDatum(model_input_from_json(value.get("model_input")),
                     {k: tensor_from_json(v, f"datum {i} {k}") for k, v in inputs.items()})


def forward_backward_from_json(body: dict, key: str) -> tuple[list[WireDatum], str, dict]:
    """JSON {"forward_backward_input" | "forward_input": {"data", "loss_fn", "loss_fn_config"}}."""
    fb_input = get(body, key, dict)
    data = get(fb_input, "data", list)
    config = get(fb_input, "loss_fn_config", dict, None) or {}
    return [datum_from_json(d, i) for i, d in enumerate(data)], get(fb_input, "loss_fn", str), config


# -- protobuf ----------------------------------------------------------------------------------------
_PROTO: tuple | None = None  # (tinker_public_pb2, {proto DType: numpy dtype}), loaded on first use


def _proto():
    global _PROTO
    if _PROTO is None:
        from tinker.proto import tinker_public_pb2 as pb

        _PROTO = pb, {pb.DTYPE_FLOAT32: np.float32, pb.DTYPE_INT64: np.int64, pb.DTYPE_INT32: np.int32}
    return _PROTO


def _pb():
    return _proto()[0]


def _tensor_from_proto(msg, what) -> torch.Tensor:
    """`what`: the field's name for error messages, or a () -> name (built only when needed: this runs once per
    tensor of every forward_backward, on the request's critical path)."""
    dtype = _proto()[1].get(msg.dtype)
    if dtype is None:
        raise BadRequest(f"{what if isinstance(what, str) else what()}: unsupported dtype {msg.dtype}")
    shape = list(msg.shape)
    try:
        if msg.HasField("sparse_csr"):
            csr = msg.sparse_csr
            dense = torch.sparse_csr_tensor(torch.from_numpy(np.frombuffer(csr.crow_indices, np.int64).copy()),
                                            torch.from_numpy(np.frombuffer(csr.col_indices, np.int64).copy()),
                                            torch.from_numpy(np.frombuffer(csr.values, dtype).copy()),
                                            size=shape).to_dense()
            return dense
        array = np.frombuffer(msg.dense, dtype=dtype).copy()
        return torch.from_numpy(array.reshape(shape) if shape else array)
    except (ValueError, RuntimeError) as exc:
        raise BadRequest(f"{what if isinstance(what, str) else what()}: {exc}") from None


def forward_backward_from_proto(body: bytes):
    """-> (model_id, seq_id, data, loss_fn, loss_fn_config, forward_only)."""
    from google.protobuf.message import DecodeError

    msg = _pb().ForwardBackwardRequest()
    try:
        msg.ParseFromString(body)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise BadRequest(f"body is not a ForwardBackwardRequest protobuf: {exc}") from None
    data = []
    for i, d in enumerate(msg.data):
        tokens: list[int] = []
        for chunk in d.model_input:
            if chunk.WhichOneof("chunk") != "encoded_text":
                raise BadRequest(f"datum {i}: only encoded_text chunks are supported")
            tokens += np.frombuffer(chunk.encoded_text.tokens, dtype="<i4").tolist()
        data.append(WireDatum(tokens, {k: _tensor_from_proto(v, lambda i=i, k=k: f"datum {i} {k}")
                                       for k, v in d.loss_fn_inputs.items()}))
    config: dict = dict(msg.loss_fn_config)
    for key, value in msg.loss_fn_config_v2.items():  # v2 wins where set (it alone can carry strings)
        config[key] = value.number if value.WhichOneof("value") == "number" else value.text
    if not msg.model_id:
        raise BadRequest("missing field 'model_id'")
    return msg.model_id, msg.seq_id, data, msg.loss_fn, config, msg.forward_only
