"""`ttt serve`: a Tinker-compatible HTTP server over our learner and sampler.

    ttt serve --model tiny --host 127.0.0.1 --port 8000 --checkpoint-dir ~/ttt-ckpt
    TINKER_BASE_URL=http://127.0.0.1:8000 TINKER_API_KEY=tml-... python my_tinker_script.py

    ttt serve keys add --name alice --checkpoint-dir ~/ttt-ckpt     # prints "<key id> tml-..."
    ttt serve keys list --checkpoint-dir ~/ttt-ckpt
    ttt serve keys revoke k-0123abcd --checkpoint-dir ~/ttt-ckpt

Keys, sessions, training runs and checkpoints (owner, TTL, published flag) live in SQLite next to the
checkpoint dir (<dir>.meta.sqlite), so a restarted server on the same --checkpoint-dir lists and loads them.
Each key sees only what it made. With --api-key (or TTT_SERVE_API_KEY) that key is added; with no key at all,
one is generated and printed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import threading

from shim.server.asgi import Limits, build_app
from shim.server.db import MetaDB, default_path
from shim.server.endpoints import LONG_POLL_S, TinkerApi
from shim.server.http_server import DEFAULT_MAX_BODY, TinkerHTTPServer
from shim.server.keys import KeyRing, add_key, keys_main
from shim.server.metrics import access_logger
from shim.server.registry import Registry
from shim.server.rest import RestApi, sweep_expired

log = logging.getLogger(__name__)
# The event loop answers requests in microseconds but needs the GIL to do it; with Python's default 5 ms switch
# interval a request arriving while the learner thread runs Python (module calls, the optimizer's per-parameter
# loop) waits up to 5 ms, and the learner waits as long for a busy loop. ~3% of a tiny-model RL step
# (BENCHMARKS.md, bench_shim).
SWITCH_INTERVAL_MS = 1.0


class ExpirySweeper(threading.Thread):
    """Deletes checkpoints whose TTL passed, every interval_s (lists hide them from the moment they expire)."""

    def __init__(self, registry: Registry, interval_s: float):
        super().__init__(name="ttt-serve-ttl", daemon=True)
        self.registry, self.interval_s = registry, interval_s
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.interval_s):
            try:
                n = sweep_expired(self.registry)
                if n:
                    log.info("deleted %d expired checkpoint(s)", n)
            except Exception:  # a locked or vanished file must not end the sweeps
                log.exception("checkpoint expiry sweep failed")


def build_server(engine, *, api_keys: list[str] = (), host: str = "127.0.0.1", port: int = 0,
                 max_body: int = DEFAULT_MAX_BODY, long_poll_s: float = LONG_POLL_S, db_path=None,
                 sweep_s: float = 60.0, body_timeout_s: float = 30.0, header_timeout_s: float = 20.0,
                 access_log: str | None = None) -> TinkerHTTPServer:
    db = MetaDB(db_path or default_path(engine.store.root))
    for key in api_keys:
        add_key(db, "default", key)
    registry = Registry(db, engine.store)
    api = TinkerApi(engine, long_poll_s=long_poll_s, registry=registry)
    rest = RestApi(registry, engine)
    app = build_app(api, rest, KeyRing(db), Limits(max_body, body_timeout_s), access_logger(access_log))
    server = TinkerHTTPServer(app, host, port, max_body=max_body, header_timeout_s=header_timeout_s, api=api,
                              on_reject=lambda status: api.metrics.observe("(protocol)", "-", status, 0.0))
    server.db, server.registry, server.rest = db, registry, rest
    server.sweeper = ExpirySweeper(registry, sweep_s)
    server.sweeper.start()
    return server


def start_server(engine, api_key: str, host: str = "127.0.0.1", port: int = 0, max_body: int = DEFAULT_MAX_BODY,
                 long_poll_s: float = LONG_POLL_S, **kwargs) -> tuple[TinkerHTTPServer, threading.Thread]:
    """Serve `engine` from a background thread (tests, benchmarks); stop with server.shutdown()."""
    server = build_server(engine, api_keys=[api_key] if api_key else [], host=host, port=port, max_body=max_body,
                          long_poll_s=long_poll_s, **kwargs)
    thread = threading.Thread(target=server.serve_forever, name="ttt-serve", daemon=True)
    thread.start()
    server.wait_started()
    return server, thread


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ttt serve", description=__doc__.split("\n\n")[0],
                                epilog="`ttt serve keys --help`: manage API keys")
    p.add_argument("--model", default="tiny", help="model name ('tiny', a hub id in the local cache) or local dir")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("TTT_SERVE_API_KEY"),
                   help="a key to accept (SDK: TINKER_API_KEY; must start with 'tml-'), added to the key database; "
                        "default: $TTT_SERVE_API_KEY; with no key anywhere one is generated and printed")
    p.add_argument("--sampler", default="vllm", choices=["vllm", "hf"], help="inference backend")
    p.add_argument("--checkpoint-dir", default=None, help="where tinker:// checkpoints live (default: a temp dir)")
    p.add_argument("--db", default=None, help="metadata database (default: <checkpoint-dir>.meta.sqlite)")
    p.add_argument("--max-lora-rank", type=int, default=32)
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--max-body-mb", type=float, default=DEFAULT_MAX_BODY / 2**20)
    p.add_argument("--body-timeout", type=float, default=30.0, help="seconds a request body may take to arrive")
    p.add_argument("--header-timeout", type=float, default=20.0, help="seconds request headers may take")
    p.add_argument("--ttl-sweep", type=float, default=60.0, help="seconds between deletions of expired checkpoints")
    p.add_argument("--access-log", default="-", help="JSON-lines access log: '-' (stderr, default), a file, or off")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch intra-op threads of the learner (default: torch's own choice, one per core)")
    p.add_argument("--switch-interval-ms", type=float, default=SWITCH_INTERVAL_MS,
                   help="Python's GIL switch interval in this process (sys.setswitchinterval; Python's default is "
                        "5 ms): how long the event loop may wait for the GIL while a learner or sampler thread "
                        "runs Python code, and the reverse")
    p.add_argument("--log-level", default="INFO")
    return p


def serve_main(argv: list[str]) -> int:
    if argv[:1] == ["keys"]:
        def db_for(checkpoint_dir):
            if checkpoint_dir is None:
                raise SystemExit("ttt serve keys: pass --db or --checkpoint-dir (the server's)")
            return default_path(checkpoint_dir)
        return keys_main(argv[1:], db_for)
    args = build_parser().parse_args(argv)
    if not args.switch_interval_ms > 0:
        raise SystemExit(f"ttt serve: --switch-interval-ms must be > 0, got {args.switch_interval_ms}")
    sys.setswitchinterval(args.switch_interval_ms / 1000)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from shim.factory import make_engine

    if args.torch_threads is not None:
        if args.torch_threads < 1:
            raise SystemExit(f"ttt serve: --torch-threads must be >= 1, got {args.torch_threads}")
        import torch

        torch.set_num_threads(args.torch_threads)
    if args.api_key and not args.api_key.startswith("tml-"):
        raise SystemExit("ttt serve: --api-key must start with 'tml-' (the tinker SDK refuses other keys)")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"ttt serve: WARNING: listening on {args.host}, reachable beyond this machine", flush=True)
    checkpoint_dir = args.checkpoint_dir or tempfile.mkdtemp(prefix="ttt-shim-ckpt-")
    db_path = args.db or default_path(checkpoint_dir)
    generated = None
    if not args.api_key:
        db = MetaDB(db_path)
        if not any(row["revoked"] is None for row in db.keys()):
            generated, _ = add_key(db, "generated")
        db.close()
    engine = make_engine(args.model, sampler_kind=args.sampler, checkpoint_dir=checkpoint_dir,
                         max_lora_rank=args.max_lora_rank, sampler_kwargs={"max_model_len": args.max_model_len})
    server = build_server(engine, api_keys=[args.api_key] if args.api_key else [], host=args.host, port=args.port,
                          max_body=int(args.max_body_mb * 2**20), db_path=db_path, sweep_s=args.ttl_sweep,
                          body_timeout_s=args.body_timeout, header_timeout_s=args.header_timeout,
                          access_log=args.access_log)
    print(f"ttt serve: model {args.model} ({engine.model_path}), {args.sampler} sampler, checkpoints in "
          f"{engine.store.root}, metadata in {server.db.path}", flush=True)
    print(f"ttt serve: listening on {server.url}", flush=True)
    # print a key only if we made it; otherwise the user has theirs (or `ttt serve keys add`)
    shown = generated or ("<the key you configured>" if args.api_key else "<a key from `ttt serve keys add`>")
    print(f"ttt serve: export TINKER_BASE_URL={server.url} TINKER_API_KEY={shown}", flush=True)
    try:
        server.serve_forever()  # uvicorn: SIGINT / SIGTERM stop it gracefully
    except KeyboardInterrupt:
        pass
    finally:
        server.sweeper.stop.set()
        server.server_close()
        close = getattr(engine.pool.sampler, "close", None)
        if close is not None:
            close()
    return 0


if __name__ == "__main__":
    sys.exit(serve_main(sys.argv[1:]))
