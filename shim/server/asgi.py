"""The HTTP front end as a Starlette app: routing (unknown path -> 404, wrong method -> 405, both JSON and never
retried by the SDK), API-key check, bounded body reads with a read timeout, the mapping of errors to status
codes (Starlette exception handlers), /metrics and the access log.

Handlers stay plain functions of endpoints.Request -> Reply, run on the event loop: they parse, check and enqueue
(locks they take are held for microseconds; training and sampling run on the engine's threads). The long poll
(retrieve_future) is a coroutine, so a waiting client costs no thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import tarfile
import tempfile
import time
import traceback
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.requests import Request as StarletteRequest
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from shim.server.endpoints import Request, TinkerApi
from shim.server.keys import KeyRing
from shim.server.metrics import ServeMetrics, log_access
from shim.server.rest import RestApi

log = logging.getLogger(__name__)
PREFIX = "/api/v1/"
UNAUTHENTICATED = ("/api/v1/healthz", "/metrics")  # exact paths
SIGNED_PREFIX = "/api/v1/checkpoint_archives/"  # authorised by the URL's signature instead of a key
_JSON = "application/json"
HOT = ("retrieve_future", "forward_backward", "optim_step", "asample", "save_weights_for_sampler", "forward",
       "session_heartbeat")


def json_reply(status: int, message: str, headers: dict | None = None) -> Response:
    return Response(json.dumps({"error": message}).encode(), status, headers=headers, media_type=_JSON)


# -- error mapping: what a handler raises -> the reply ---------------------------------------------------
async def _http_error(request, exc: HTTPException) -> Response:
    return json_reply(exc.status_code, str(exc.detail), dict(exc.headers or {}))


async def _not_found(request, exc: KeyError) -> Response:
    return json_reply(404, str(exc.args[0] if exc.args else exc))


async def _bad_request(request, exc: Exception) -> Response:
    return json_reply(400, f"{type(exc).__name__}: {exc}"[:2000])


async def _gone(request, exc: ClientDisconnect) -> Response:
    return json_reply(400, "client disconnected")  # nobody reads it; keeps a hang-up out of the error log


async def _server_error(request, exc: Exception) -> Response:
    log.error("error in %s %s: %s", request.method, request.url.path, "".join(traceback.format_exception(exc)))
    return json_reply(500, f"internal error: {type(exc).__name__}: {exc}"[:2000])


EXCEPTION_HANDLERS = {
    HTTPException: _http_error, ClientDisconnect: _gone, KeyError: _not_found, FileNotFoundError: _not_found,
    ValueError: _bad_request, TypeError: _bad_request, OverflowError: _bad_request, Exception: _server_error,
}


class Limits:
    def __init__(self, max_body: int, body_timeout_s: float):
        self.max_body, self.body_timeout_s = max_body, body_timeout_s


async def read_body(request: StarletteRequest, limits: Limits, headers: dict | None = None) -> bytes:
    """The whole body, never more than max_body bytes held (Content-Length or chunked), each read bounded by
    body_timeout_s. A refusal closes the connection: its unread body must not be parsed as a next request."""
    close = {"connection": "close"}
    headers = _headers(request.scope) if headers is None else headers
    if headers.get(b"content-encoding", b"identity").lower() not in (b"identity", b""):
        raise HTTPException(415, "Content-Encoding is not supported; send the body uncompressed", close)
    declared = headers.get(b"content-length", b"").decode("latin-1") or None
    if declared is not None and int(declared) > limits.max_body:  # the parser already checked it is a number
        raise HTTPException(413, f"body of {declared} bytes is larger than the limit {limits.max_body}", close)
    chunks, size = [], 0
    while True:
        try:
            async with asyncio.timeout(limits.body_timeout_s):  # a timer, not a task per read as wait_for makes
                message = await request.receive()
        except TimeoutError:
            raise HTTPException(408, f"request body not received within {limits.body_timeout_s:g} s", close) from None
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limits.max_body:
            raise HTTPException(413, f"body larger than {limits.max_body} bytes", close)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _headers(scope: dict) -> dict[bytes, bytes]:
    """Raw header name (lower case, as ASGI gives it) -> value; the first of a repeated header wins, as in
    starlette's Headers.get (a dict, without building starlette's Headers object on every request)."""
    return dict(reversed(scope["headers"]))


def _base_url(scope: dict, headers: dict) -> str:
    """scheme://host[:port] as the client addressed us (starlette's request.url, without parsing a URL on every
    request): the Host header, else the server's own address."""
    host = headers.get(b"host")
    if host is not None:
        return f"{scope['scheme']}://{host.decode('latin-1')}"
    server = scope.get("server")
    if server is None:
        return ""
    default = {"http": 80, "https": 443}.get(scope["scheme"])
    return f"{scope['scheme']}://{server[0]}" + ("" if server[1] == default else f":{server[1]}")


def _endpoint(handler, name: str, limits: Limits):
    is_async = asyncio.iscoroutinefunction(handler)

    async def endpoint(request: StarletteRequest) -> Response:
        scope = request.scope
        headers = _headers(scope)
        body = b""
        if request.method in ("POST", "PUT", "PATCH", "DELETE"):
            body = await read_body(request, limits, headers)
        query = scope["query_string"]
        req = Request(request.method, name, body, headers.get(b"content-type", b"").decode("latin-1").lower(),
                      b"application/x-protobuf" in headers.get(b"accept", b"").lower(), dict(request.path_params),
                      scope.get("ttt.owner", ""), dict(parse_qsl(query.decode("latin-1"))) if query else {},
                      _base_url(scope, headers))
        # Sync handlers run inline: each only parses, checks and enqueues (the work itself runs on the engine's
        # threads), and a hop to a thread pool and back cost more per request than the handler itself.
        reply = await handler(req) if is_async else handler(req)
        return Response(reply.body, reply.status, media_type=reply.content_type)

    return endpoint


class AuthMiddleware:
    """X-API-Key -> the owning key id in scope["ttt.owner"], or a 401 before any routing (an unknown path with
    a bad key is a 401, not a 404: nothing is revealed to a caller without a key)."""

    def __init__(self, app, keyring: KeyRing):
        self.app, self.keyring = app, keyring

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            path = scope["path"]
            if path not in UNAUTHENTICATED and not path.startswith(SIGNED_PREFIX):
                key = next((v for k, v in scope["headers"] if k == b"x-api-key"), b"").decode("latin-1")
                owner = self.keyring.owner(key)
                if owner is None:
                    return await json_reply(401, "invalid, revoked or missing X-API-Key")(scope, receive, send)
                scope["ttt.owner"] = owner
        await self.app(scope, receive, send)


class ObserveMiddleware:
    """Request counts and latency by route pattern (Prometheus) and one JSON line per request (access log)."""

    def __init__(self, app, metrics: ServeMetrics, access_log):
        self.app, self.metrics, self.access_log = app, metrics, access_log

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        state = {"status": 500, "bytes": 0}

        async def observed_send(message):
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            elif message["type"] == "http.response.body":
                state["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            seconds = time.perf_counter() - start
            route = scope.get("route")
            endpoint = route.path.removeprefix(PREFIX) if route is not None else "(unmatched)"
            self.metrics.observe(endpoint, scope["method"], state["status"], seconds)
            if self.access_log is not None:
                client = scope.get("client") or ("", 0)
                log_access(self.access_log, client=client[0], method=scope["method"], path=scope["path"],
                           endpoint=endpoint, status=state["status"], ms=round(seconds * 1000, 3),
                           bytes_out=state["bytes"], key=scope.get("ttt.owner"))


def build_app(api: TinkerApi, rest: RestApi, keyring: KeyRing, limits: Limits, access_log=None,
              pool: concurrent.futures.Executor | None = None):
    pool = pool or concurrent.futures.ThreadPoolExecutor(32, thread_name_prefix="ttt-serve-http")
    handlers = {**api.routes, **rest.routes}
    # the router tries routes in order (a regex match each): the per-step calls of a training loop go first.
    # No two patterns match the same path, so the order changes nothing else.
    order = sorted(handlers, key=lambda route: route[1] not in HOT)
    routes = [Route(PREFIX + pattern, _endpoint(handlers[method, pattern], pattern, limits), methods=[method])
              for method, pattern in order]

    async def metrics(request: StarletteRequest) -> Response:
        body, content_type = api.metrics.exposition()
        return Response(body, media_type=content_type)

    async def archive(request: StarletteRequest) -> Response:
        p, q = request.path_params, request.query_params
        directory = rest.archive_path(p["run_id"], p["kind"], p["name"], q.get("expires", ""),
                                      q.get("signature", ""))
        if directory is None:
            raise KeyError("no such archive, or its URL expired")
        fd, tar_path = tempfile.mkstemp(prefix="ttt-archive-", suffix=".tar")
        os.close(fd)

        def pack():
            with tarfile.open(tar_path, "w") as tar:
                tar.add(str(directory), arcname=p["name"])

        await asyncio.get_running_loop().run_in_executor(pool, pack)
        return FileResponse(tar_path, media_type="application/x-tar", filename=f"{p['name']}.tar",
                            background=BackgroundTask(os.unlink, tar_path))

    routes += [Route("/metrics", metrics, methods=["GET"]),
               Route(SIGNED_PREFIX + "{run_id}/{kind}/{name}.tar", archive, methods=["GET"])]
    app = Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS)
    return ObserveMiddleware(AuthMiddleware(app, keyring), api.metrics, access_log)

