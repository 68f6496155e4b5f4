"""The Tinker endpoints under /api/v1/ (TINKER_API.md 7.2-7.4), as functions of (api, request) -> reply.

Operations answer at once with {"request_id", ...}; their results come from retrieve_future. Failures of an
operation become {"error", "category"} results; bad requests raise BadRequest (400) / KeyError (404).
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass, field

from shim.engine import Engine
from shim.server import wire_decode as wd
from shim.server import wire_encode as we
from shim.server.request_futures import RequestFutures
from shim.training_models import LoraRequest

LONG_POLL_S = 30.0  # < the SDK's 45 s retrieve_future timeout


@dataclass
class Request:
    method: str
    endpoint: str  # the path after /api/v1/
    body: bytes
    content_type: str
    accepts_proto: bool
    params: dict = field(default_factory=dict)  # from the path, e.g. {"id": ...}


@dataclass
class Reply:
    status: int
    content_type: str
    body: bytes


def ok(value: dict) -> Reply:
    return Reply(200, *we.json_body(value))


def _error_result(exc: BaseException) -> dict:
    user = isinstance(exc, (ValueError, KeyError, FileNotFoundError, TypeError))
    message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return {"error": f"{type(exc).__name__}: {message}", "category": "user" if user else "server"}


class TinkerApi:
    def __init__(self, engine: Engine, long_poll_s: float = LONG_POLL_S, workers: int = 8):
        self.engine = engine
        self.futures = RequestFutures()
        self.long_poll_s = long_poll_s
        self.executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="ttt-serve-op")
        self.routes = {
            ("POST", "client/config"): self.client_config, ("POST", "create_session"): self.create_session,
            ("POST", "session_heartbeat"): self.heartbeat, ("POST", "telemetry"): self.telemetry,
            ("GET", "healthz"): lambda r: ok({"status": "ok"}),
            ("GET", "get_server_capabilities"): self.capabilities, ("POST", "create_model"): self.create_model,
            ("POST", "get_info"): self.get_info, ("POST", "forward_backward"): self.forward_backward,
            ("POST", "forward"): self.forward_backward, ("POST", "optim_step"): self.optim_step,
            ("POST", "save_weights"): self.save_weights,
            ("POST", "save_weights_for_sampler"): self.save_weights_for_sampler,
            ("POST", "load_weights"): self.load_weights,
            ("POST", "create_sampling_session"): self.create_sampling_session,
            ("GET", "samplers/{id}"): self.get_sampler, ("POST", "asample"): self.asample,
            ("POST", "retrieve_future"): self.retrieve_future, ("POST", "sessions/{id}/finish"): self.finish,
        }

    # -- session -----------------------------------------------------------------------------------
    def client_config(self, r: Request) -> Reply:
        return ok({"pjwt_auth_enabled": False, "use_pyqwest_transport": True, "parallel_fwdbwd_chunks": True,
                   "proto_compress_fwdbwd": False, "fwdbwd_max_chunk_len": 1024,
                   "fwdbwd_max_chunk_bytes_count": 5_000_000, "sample_use_retrieve_futures": False,
                   "custom_loss_server_side": False, "sample_join_sampling_session": False})

    def create_session(self, r: Request) -> Reply:
        body = wd.parse_json(r.body)
        session_id = self.engine.create_session(wd.get(body, "user_metadata", dict, None))
        return ok({"type": "create_session", "session_id": session_id})

    def heartbeat(self, r: Request) -> Reply:
        session_id = wd.get(wd.parse_json(r.body), "session_id", str)
        if not self.engine.has_session(session_id):
            return Reply(410, *we.json_body({"error": f"session {session_id} is finished or unknown"}))
        return ok({"type": "session_heartbeat"})

    def telemetry(self, r: Request) -> Reply:
        return ok({"status": "accepted"})

    def capabilities(self, r: Request) -> Reply:
        return ok({"supported_models": [{"model_name": self.engine.served_name, "trainable": True,
                                         "sampleable": True, "max_context_length": self.engine.pool.max_model_len}]})

    def finish(self, r: Request) -> Reply:
        self.engine.finish_session(r.params["id"])
        return ok({})

    # -- futures -----------------------------------------------------------------------------------
    def _start(self, key, start, encode=lambda result, _: we.json_body(result), extra=None) -> Reply:
        request_id, pending = self.futures.add(key, start, encode, extra)
        return ok({"request_id": request_id, **pending.extra})

    def _background(self, fn, *args) -> concurrent.futures.Future:
        return self.executor.submit(fn, *args)

    def retrieve_future(self, r: Request) -> Reply:
        request_id = wd.get(wd.parse_json(r.body), "request_id", str)
        pending = self.futures.get(request_id)
        if pending is None:
            raise KeyError(f"unknown request_id {request_id!r}")
        done, _ = concurrent.futures.wait([pending.future], timeout=self.long_poll_s)
        if not done:
            return ok({"type": "try_again", "request_id": request_id, "queue_state": "active"})
        exc = pending.future.exception()
        if exc is not None:
            return ok(_error_result(exc))
        try:
            return Reply(200, *pending.encode(pending.future.result(), r.accepts_proto))
        except Exception as exc:  # an encoding bug must still reach the client as this request's error
            return ok(_error_result(exc))

    # -- training ----------------------------------------------------------------------------------
    def create_model(self, r: Request) -> Reply:
        body = wd.parse_json(r.body)
        session_id, seq = wd.get(body, "session_id", str), wd.get(body, "model_seq_id", int)
        cfg = wd.get(body, "lora_config", dict, None) or {}
        lora = LoraRequest(rank=wd.get(cfg, "rank", int, 32), seed=wd.get(cfg, "seed", int, None),
                           train_mlp=wd.get(cfg, "train_mlp", bool, True),
                           train_attn=wd.get(cfg, "train_attn", bool, True),
                           train_unembed=wd.get(cfg, "train_unembed", bool, True))
        base_model = wd.get(body, "base_model", str, None)
        self.engine.check_base_model(base_model)  # fail fast, as a 400
        start = lambda: self._background(self.engine.create_model, session_id, seq, base_model, lora,
                                         wd.get(body, "user_metadata", dict, None))
        return self._start(("create_model", session_id, seq), start,
                           lambda model_id, _: we.json_body({"model_id": model_id, "type": "create_model"}))

    def get_info(self, r: Request) -> Reply:
        return ok(self.engine.get_info(wd.get(wd.parse_json(r.body), "model_id", str)))

    def _ordered(self, model_id: str, seq_id: int, encode, op, *args) -> Reply:
        if not self.engine.models.exists(model_id):
            raise KeyError(f"unknown model_id {model_id!r}")
        start = lambda: self.engine.submit(model_id, seq_id, op, *args)
        return self._start((model_id, seq_id), start, encode)

    def forward_backward(self, r: Request) -> Reply:
        if r.content_type.startswith(we.PROTO):
            model_id, seq_id, data, loss_fn, config, forward_only = wd.forward_backward_from_proto(r.body)
        else:
            body = wd.parse_json(r.body)
            forward_only = r.endpoint == "forward"
            data, loss_fn, config = wd.forward_backward_from_json(
                body, "forward_input" if forward_only else "forward_backward_input")
            model_id, seq_id = wd.get(body, "model_id", str), wd.get(body, "seq_id", int)
        if not data:
            raise wd.BadRequest("no datums: pass at least one Datum")
        return self._ordered(model_id, seq_id, we.forward_backward, Engine.op_forward_backward, data, loss_fn,
                             config, forward_only)

    def optim_step(self, r: Request) -> Reply:
        from trainer.learner import AdamParams

        body = wd.parse_json(r.body)
        given = wd.get(body, "adam_params", dict, None) or {}
        unknown = set(given) - set(AdamParams.__dataclass_fields__)
        if unknown:
            raise wd.BadRequest(f"unknown adam_params fields {sorted(unknown)}")
        adam = AdamParams(**{k: wd.get(given, k, float) for k in given if given[k] is not None})
        return self._ordered(wd.get(body, "model_id", str), wd.get(body, "seq_id", int),
                             lambda m, _: we.json_body({"metrics": m, "type": "optim_step"}), Engine.op_optim_step,
                             adam)

    def save_weights(self, r: Request) -> Reply:
        body = wd.parse_json(r.body)
        name = wd.get(body, "path", str)
        return self._ordered(wd.get(body, "model_id", str), wd.get(body, "seq_id", int),
                             lambda p, _: we.json_body({"path": p, "type": "save_weights"}),
                             self.engine.op_save_state, name, wd.get(body, "overwrite", bool, True))

    def save_weights_for_sampler(self, r: Request) -> Reply:
        body = wd.parse_json(r.body)
        model_id, seq_id = wd.get(body, "model_id", str), wd.get(body, "seq_id", int)
        name = wd.get(body, "path", str, None)
        if name is not None:
            return self._ordered(model_id, seq_id,
                                 lambda p, _: we.json_body({"path": p, "type": "save_weights_for_sampler"}),
                                 self.engine.op_save_for_sampler, name)
        return self._ordered(model_id, seq_id,
                             lambda sid, _: we.json_body({"path": None, "sampling_session_id": sid,
                                                          "type": "save_weights_for_sampler"}),
                             self.engine.op_save_ephemeral, wd.get(body, "sampling_session_seq_id", int),
                             wd.get(body, "kind", str, "snapshot"))

    def load_weights(self, r: Request) -> Reply:
        body = wd.parse_json(r.body)
        path, optimizer = wd.get(body, "path", str), wd.get(body, "optimizer", bool, False)
        encode = lambda model_id: lambda p, _: we.json_body({"path": path, "model_id": model_id, "type": "load_weights"})
        if "model_seq_id" in body and body.get("model_id") is None:  # create-via-load
            session_id, seq = wd.get(body, "session_id", str), wd.get(body, "model_seq_id", int)
            base_model = wd.get(body, "base_model", str, None)
            self.engine.check_base_model(base_model)
            start = lambda: self._background(self.engine.create_model_from_state, session_id, seq, path,
                                             optimizer, base_model)
            return self._start(("load", session_id, seq), start,
                               lambda model_id, _: we.json_body({"path": path, "model_id": model_id,
                                                                 "type": "load_weights"}))
        model_id = wd.get(body, "model_id", str)
        return self._ordered(model_id, wd.get(body, "seq_id", int), encode(model_id), self.engine.op_load_weights,
                             path, optimizer)

    # -- sampling ----------------------------------------------------------------------------------
    def create_sampling_session(self, r: Request) -> Reply:
        body = wd.parse_json(r.body)
        sampling_id = self.engine.create_sampling_session(
            wd.get(body, "session_id", str), wd.get(body, "sampling_session_seq_id", int),
            model_path=wd.get(body, "model_path", str, None), base_model=wd.get(body, "base_model", str, None))
        return ok({"type": "create_sampling_session", "sampling_session_id": sampling_id})

    def get_sampler(self, r: Request) -> Reply:
        base_model, target = self.engine.sampling_session(r.params["id"])
        return ok({"sampler_id": r.params["id"], "base_model": base_model})

    def asample(self, r: Request) -> Reply:
        body = wd.parse_json(r.body)
        sampling_id = wd.get(body, "sampling_session_id", str)
        seq_id = wd.get(body, "seq_id", int, None)
        num_samples = wd.get(body, "num_samples", int, 1)
        if not 1 <= num_samples <= 1024:
            raise wd.BadRequest(f"num_samples must be in 1..1024, got {num_samples}")
        prompt = wd.model_input_from_json(body.get("prompt"))
        params = wd.get(body, "sampling_params", dict)
        prompt_logprobs = bool(wd.get(body, "prompt_logprobs", bool, False))
        self.engine.sampling_session(sampling_id)  # unknown id -> 404 now, not a failed future later
        key = None if seq_id is None else (sampling_id, seq_id)
        ids = [f"{sampling_id}:{seq_id}:{i}" for i in range(num_samples)]
        start = lambda: self._background(self.engine.sample, sampling_id, prompt, num_samples, params,
                                         prompt_logprobs)
        return self._start(key, start, lambda res, proto: we.sample(res[0], res[1], proto),
                           {"sample_sequence_ids": ids})
