"""The Tinker endpoints under /api/v1/ (TINKER_API.md 7.2-7.4), as functions of (api, request) -> reply.

Operations answer at once with {"request_id", ...}; their results come from retrieve_future. Failures of an
operation become {"error", "category"} results; bad requests raise BadRequest (400) / KeyError (404).
Every id a request names must belong to the caller's API key (registry.py); sessions, runs, samplers and
checkpoints are recorded in the metadata database as they are made.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from dataclasses import dataclass, field

from shim.engine import Engine
from shim.server import validate
from shim.server import wire_decode as wd
from shim.server import wire_encode as we
from shim.server.metrics import ServeMetrics
from shim.server.registry import Registry
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
    owner: str = ""  # the key id of the caller's API key
    query: dict = field(default_factory=dict)
    base_url: str = ""  # scheme://host:port the client used, for URLs the server hands out


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


def _ttl(body: dict) -> int | None:
    ttl = wd.get(body, "ttl_seconds", int, None)
    return None if ttl is None else validate.int_in(ttl, "ttl_seconds", 1, 10 * 366 * 86400)


def _str_dict(value) -> dict | None:
    """user_metadata as TrainingRun / Checkpoint declare it (dict[str, str])."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise wd.BadRequest("user_metadata must be an object")
    return {str(k): v if isinstance(v, str) else we.json_body(v)[1].decode() for k, v in value.items()}


class TinkerApi:
    def __init__(self, engine: Engine, long_poll_s: float = LONG_POLL_S, workers: int = 8,
                 registry: Registry | None = None, metrics: ServeMetrics | None = None):
        self.engine = engine
        self.registry = registry
        self.futures = RequestFutures()
        self.long_poll_s = long_poll_s
        self.executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="ttt-serve-op")
        self.metrics = metrics or ServeMetrics(self.futures.pending)
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
        metadata = wd.get(body, "user_metadata", dict, None)
        session_id = self.engine.create_session(metadata)
        self.registry.add_session(r.owner, session_id, _str_dict(metadata), wd.get(body, "display_name", str, None))
        return ok({"type": "create_session", "session_id": session_id})

    def heartbeat(self, r: Request) -> Reply:
        session_id = wd.get(wd.parse_json(r.body), "session_id", str)
        if self.registry.session_owner(session_id) != r.owner or not self.engine.has_session(session_id):
            return Reply(410, *we.json_body({"error": f"session {session_id} is finished or unknown"}))
        return ok({"type": "session_heartbeat"})

    def telemetry(self, r: Request) -> Reply:
        return ok({"status": "accepted"})

    def capabilities(self, r: Request) -> Reply:
        return ok({"supported_models": [{"model_name": self.engine.served_name, "trainable": True,
                                         "sampleable": True, "max_context_length": self.engine.pool.max_model_len}]})

    def finish(self, r: Request) -> Reply:
        session_id = self.registry.require_session(r.owner, r.params["id"])
        self.engine.finish_session(session_id)
        self.registry.db.finish_session(session_id)
        return ok({})

    # -- futures -----------------------------------------------------------------------------------
    def _start(self, r: Request, key, start, encode=lambda result, _: we.json_body(result), extra=None) -> Reply:
        # the owner is part of the key: two keys' identical (model_id, seq_id) can never share a future
        request_id, pending = self.futures.add(None if key is None else (r.owner, key), start, encode, extra,
                                               owner=r.owner)
        return ok({"request_id": request_id, **pending.extra})

    def _background(self, fn, *args) -> concurrent.futures.Future:
        return self.executor.submit(fn, *args)

    async def retrieve_future(self, r: Request) -> Reply:
        """A long poll on the event loop (no thread per waiting client): replies as soon as the operation
        finishes, or with try_again after long_poll_s."""
        request_id = wd.get(wd.parse_json(r.body), "request_id", str)
        pending = self.futures.get(request_id)
        if pending is None or pending.owner != r.owner:
            raise KeyError(f"unknown request_id {request_id!r}")
        if not await _wait(pending.future, self.long_poll_s):
            return ok({"type": "try_again", "request_id": request_id, "queue_state": "active"})
        exc = pending.future.exception()
        if exc is not None:
            return ok(_error_result(exc))
        try:
            return Reply(200, *pending.encode(pending.future.result(), r.accepts_proto))
        except Exception as exc:  # an encoding bug must still reach the client as this request's error
            return ok(_error_result(exc))

    # -- training ----------------------------------------------------------------------------------
    def client_model_name(self, base_model: str) -> str:
        """The base-model name clients see (get_info, samplers/{id}). The SDK's get_tokenizer() loads it with
        AutoTokenizer.from_pretrained: a hub id ("org/name") loads from the local HF cache, but a server-side
        alias like 'tiny' cannot, so such names are reported as the model's local directory."""
        hub_id = base_model.count("/") == 1 and not base_model.startswith(("/", ".", "~"))
        return base_model if hub_id else self.engine.model_path

    def _record_run(self, owner: str, model_id: str, user_metadata) -> str:
        model = self.engine.models.get(model_id)
        self.registry.add_run(owner, model_id, model.base_model, model.learner.lora, _str_dict(user_metadata))
        return model_id

    def create_model(self, r: Request) -> Reply:
        body = wd.parse_json(r.body)
        session_id = self.registry.require_session(r.owner, wd.get(body, "session_id", str))
        seq = validate.int_in(wd.get(body, "model_seq_id", int), "model_seq_id", 0)
        cfg = wd.get(body, "lora_config", dict, None) or {}
        lora = LoraRequest(rank=validate.int_in(wd.get(cfg, "rank", int, 32), "lora_config.rank", 1, 4096),
                           seed=wd.get(cfg, "seed", int, None),
                           train_mlp=wd.get(cfg, "train_mlp", bool, True),
                           train_attn=wd.get(cfg, "train_attn", bool, True),
                           train_unembed=wd.get(cfg, "train_unembed", bool, True))
        if lora.seed is not None:
            validate.int_in(lora.seed, "lora_config.seed", -(2**63))
        base_model = wd.get(body, "base_model", str, None)
        self.engine.check_base_model(base_model)  # fail fast, as a 400
        metadata = wd.get(body, "user_metadata", dict, None)

        def create():
            return self._record_run(r.owner, self.engine.create_model(session_id, seq, base_model, lora, metadata),
                                    metadata)

        return self._start(r, ("create_model", session_id, seq), lambda: self._background(create),
                           lambda model_id, _: we.json_body({"model_id": model_id, "type": "create_model"}))

    def get_info(self, r: Request) -> Reply:
        model_id = self.registry.require_model(r.owner, wd.get(wd.parse_json(r.body), "model_id", str))
        info = self.engine.get_info(model_id)
        info["model_name"] = info["model_data"]["model_name"] = self.client_model_name(info["model_name"])
        return ok(info)

    def _ordered(self, r: Request, model_id: str, seq_id: int, encode, op, *args) -> Reply:
        self.registry.require_model(r.owner, model_id)
        if not self.engine.models.exists(model_id):
            raise KeyError(f"unknown model_id {model_id!r}")
        validate.int_in(seq_id, "seq_id", 0)
        start = lambda: self.engine.submit(model_id, seq_id, op, *args)
        reply = self._start(r, (model_id, seq_id), start, encode)
        self.registry.db.touch_run(model_id)  # after the submission: the operation need not wait for the write
        return reply

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
        validate.loss_fn_config(config)
        validate.datum_tensors(data)
        for i, d in enumerate(data):
            validate.tokens(d.model_input, f"datum {i} model_input")
        reply = self._ordered(r, model_id, seq_id, we.forward_backward, Engine.op_forward_backward, data, loss_fn,
                              config, forward_only)
        if not forward_only:
            self.metrics.tokens_trained.inc(sum(len(d.model_input) for d in data))
        return reply

    def optim_step(self, r: Request) -> Reply:
        body = wd.parse_json(r.body)
        adam = validate.adam_params(wd.get(body, "adam_params", dict, None) or {})
        return self._ordered(r, wd.get(body, "model_id", str), wd.get(body, "seq_id", int),
                             lambda m, _: we.json_body({"metrics": m, "type": "optim_step"}), Engine.op_optim_step,
                             adam)

    def _recorded(self, r: Request, op, ttl_seconds, user_metadata):
        """op(model, ...) -> tinker path, then registered under the caller's key before the future resolves
        (so a list_checkpoints right after the save's result already shows it)."""
        def run(model, *args):
            path = op(model, *args)
            self.registry.add_checkpoint(r.owner, path, ttl_seconds, user_metadata)
            return path
        return run

    def save_weights(self, r: Request) -> Reply:
        body = wd.parse_json(r.body)
        name = wd.get(body, "path", str)
        op = self._recorded(r, self.engine.op_save_state, _ttl(body), _str_dict(body.get("user_metadata")))
        return self._ordered(r, wd.get(body, "model_id", str), wd.get(body, "seq_id", int),
                             lambda p, _: we.json_body({"path": p, "type": "save_weights"}),
                             op, name, wd.get(body, "overwrite", bool, True))

    def save_weights_for_sampler(self, r: Request) -> Reply:
        body = wd.parse_json(r.body)
        model_id, seq_id = wd.get(body, "model_id", str), wd.get(body, "seq_id", int)
        name = wd.get(body, "path", str, None)
        if name is not None:
            op = self._recorded(r, self.engine.op_save_for_sampler, _ttl(body), _str_dict(body.get("user_metadata")))
            return self._ordered(r, model_id, seq_id,
                                 lambda p, _: we.json_body({"path": p, "type": "save_weights_for_sampler"}),
                                 op, name)

        def ephemeral(model, seq, kind):
            sampling_id = self.engine.op_save_ephemeral(model, seq, kind)
            self.registry.add_sampler(r.owner, sampling_id, model.base_model, None)
            return sampling_id

        return self._ordered(r, model_id, seq_id,
                             lambda sid, _: we.json_body({"path": None, "sampling_session_id": sid,
                                                          "type": "save_weights_for_sampler"}),
                             ephemeral, validate.int_in(wd.get(body, "sampling_session_seq_id", int),
                                                        "sampling_session_seq_id", 0),
                             wd.get(body, "kind", str, "snapshot"))

    def load_weights(self, r: Request) -> Reply:
        body = wd.parse_json(r.body)
        path, optimizer = wd.get(body, "path", str), wd.get(body, "optimizer", bool, False)
        self.registry.require_checkpoint(r.owner, path, allow_public=True)
        encode = lambda model_id: lambda p, _: we.json_body({"path": path, "model_id": model_id, "type": "load_weights"})
        if "model_seq_id" in body and body.get("model_id") is None:  # create-via-load
            session_id = self.registry.require_session(r.owner, wd.get(body, "session_id", str))
            seq = validate.int_in(wd.get(body, "model_seq_id", int), "model_seq_id", 0)
            base_model = wd.get(body, "base_model", str, None)
            self.engine.check_base_model(base_model)
            metadata = wd.get(body, "user_metadata", dict, None)

            def create():
                model_id = self.engine.create_model_from_state(session_id, seq, path, optimizer, base_model)
                return self._record_run(r.owner, model_id, metadata)

            return self._start(r, ("load", session_id, seq), lambda: self._background(create),
                               lambda model_id, _: we.json_body({"path": path, "model_id": model_id,
                                                                 "type": "load_weights"}))
        model_id = wd.get(body, "model_id", str)
        return self._ordered(r, model_id, wd.get(body, "seq_id", int), encode(model_id),
                             self.engine.op_load_weights, path, optimizer)

    # -- sampling ----------------------------------------------------------------------------------
    def create_sampling_session(self, r: Request) -> Reply:
        body = wd.parse_json(r.body)
        session_id = self.registry.require_session(r.owner, wd.get(body, "session_id", str))
        model_path = wd.get(body, "model_path", str, None)
        if model_path:
            self.registry.require_checkpoint(r.owner, model_path, allow_public=True)
        sampling_id = self.engine.create_sampling_session(
            session_id, validate.int_in(wd.get(body, "sampling_session_seq_id", int), "sampling_session_seq_id", 0),
            model_path=model_path, base_model=wd.get(body, "base_model", str, None))
        base_model, _ = self.engine.sampling_session(sampling_id)
        self.registry.add_sampler(r.owner, sampling_id, base_model, model_path)
        return ok({"type": "create_sampling_session", "sampling_session_id": sampling_id})

    def get_sampler(self, r: Request) -> Reply:
        sampler_id = self.registry.require_sampler(r.owner, r.params["id"])
        row = self.registry.db.sampler(sampler_id)
        try:
            base_model, _ = self.engine.sampling_session(sampler_id)
        except KeyError:  # made by an earlier run of the server: its record remains
            if row is None:
                raise
            base_model = row["base_model"]
        reply = {"sampler_id": sampler_id, "base_model": self.client_model_name(base_model)}
        if row is not None and row["model_path"]:
            reply["model_path"] = row["model_path"]
        return ok(reply)

    def asample(self, r: Request) -> Reply:
        body = wd.parse_json(r.body)
        sampling_id = wd.get(body, "sampling_session_id", str)
        seq_id = wd.get(body, "seq_id", int, None)
        if seq_id is not None:
            validate.int_in(seq_id, "seq_id", 0)
        num_samples = wd.get(body, "num_samples", int, 1)
        if not 1 <= num_samples <= 1024:
            raise wd.BadRequest(f"num_samples must be in 1..1024, got {num_samples}")
        prompt = validate.tokens(wd.model_input_from_json(body.get("prompt")), "prompt")
        params = validate.sampling_params(wd.get(body, "sampling_params", dict))
        prompt_logprobs = bool(wd.get(body, "prompt_logprobs", bool, False))
        self.registry.require_sampler(r.owner, sampling_id)
        self.engine.sampling_session(sampling_id)  # unknown id -> 404 now, not a failed future later
        key = None if seq_id is None else (sampling_id, seq_id)
        ids = [f"{sampling_id}:{seq_id}:{i}" for i in range(num_samples)]

        def count_tokens(future) -> None:
            if future.exception() is None:
                self.metrics.tokens_sampled.inc(sum(len(s.tokens) for s in future.result()[0]))

        def sample():  # no thread waits per request: a step's single-sequence requests all reach the pool
            future = self.engine.submit_sample(sampling_id, prompt, num_samples, params, prompt_logprobs)
            future.add_done_callback(count_tokens)
            return future

        return self._start(r, key, sample,
                           lambda res, proto: we.sample(res[0], res[1], proto), {"sample_sequence_ids": ids})


async def _wait(future: concurrent.futures.Future, timeout: float) -> bool:
    """Wait for a thread-side future from the event loop, without cancelling it on timeout (asyncio.wrap_future
    would cancel a still-queued operation when the poll times out). The operation's thread wakes the loop
    directly (one call_soon_threadsafe); no task is made per poll."""
    if future.done():
        return True
    loop = asyncio.get_running_loop()
    woken = loop.create_future()

    def wake(_):
        try:
            loop.call_soon_threadsafe(_resolve, woken)
        except RuntimeError:  # the loop closed (server stopped) before the operation finished
            pass

    future.add_done_callback(wake)
    try:
        async with asyncio.timeout(timeout):
            await woken
        return True
    except TimeoutError:
        return future.done()


def _resolve(waiter: asyncio.Future) -> None:
    if not waiter.done():  # a poll that timed out cancelled it
        waiter.set_result(None)
