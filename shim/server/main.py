"""`ttt serve`: a Tinker-compatible HTTP server over our learner and sampler.

    ttt serve --model tiny --host 127.0.0.1 --port 8000 --api-key tml-secret
    TINKER_BASE_URL=http://127.0.0.1:8000 TINKER_API_KEY=tml-secret python my_tinker_script.py

Without --api-key (or TTT_SERVE_API_KEY) a key is generated and printed; other keys get 401.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import threading

from shim.server.endpoints import LONG_POLL_S, TinkerApi
from shim.server.http_server import DEFAULT_MAX_BODY, TinkerHTTPServer


def start_server(engine, api_key: str, host: str = "127.0.0.1", port: int = 0, max_body: int = DEFAULT_MAX_BODY,
                 long_poll_s: float = LONG_POLL_S) -> tuple[TinkerHTTPServer, threading.Thread]:
    """Serve `engine` from a background thread (tests, benchmarks); stop with server.shutdown()."""
    server = TinkerHTTPServer(TinkerApi(engine, long_poll_s=long_poll_s), api_key, host, port, max_body)
    thread = threading.Thread(target=server.serve_forever, name="ttt-serve", daemon=True)
    thread.start()
    return server, thread


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ttt serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny", help="model name ('tiny', a hub id in the local cache) or local dir")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("TTT_SERVE_API_KEY"),
                   help="the key clients must send (SDK: TINKER_API_KEY, must start with 'tml-'); "
                        "default: $TTT_SERVE_API_KEY, else a generated one, printed at start")
    p.add_argument("--sampler", default="vllm", choices=["vllm", "hf"], help="inference backend")
    p.add_argument("--checkpoint-dir", default=None, help="where tinker:// checkpoints live (default: a temp dir)")
    p.add_argument("--max-lora-rank", type=int, default=32)
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--max-body-mb", type=float, default=DEFAULT_MAX_BODY / 2**20)
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch intra-op threads of the learner (default: torch's own choice, one per core)")
    p.add_argument("--log-level", default="INFO")
    return p


def serve_main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from shim.factory import make_engine

    if args.torch_threads is not None:
        if args.torch_threads < 1:
            raise SystemExit(f"ttt serve: --torch-threads must be >= 1, got {args.torch_threads}")
        import torch

        torch.set_num_threads(args.torch_threads)
    api_key = args.api_key or "tml-" + secrets.token_urlsafe(24)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"ttt serve: WARNING: listening on {args.host}, reachable beyond this machine", flush=True)
    engine = make_engine(args.model, sampler_kind=args.sampler, checkpoint_dir=args.checkpoint_dir,
                         max_lora_rank=args.max_lora_rank, sampler_kwargs={"max_model_len": args.max_model_len})
    server = TinkerHTTPServer(TinkerApi(engine), api_key, args.host, args.port, int(args.max_body_mb * 2**20))
    print(f"ttt serve: model {args.model} ({engine.model_path}), {args.sampler} sampler, checkpoints in "
          f"{engine.store.root}", flush=True)
    print(f"ttt serve: listening on {server.url}", flush=True)
    shown = api_key if not args.api_key else "<the key you configured>"  # print a key only if we made it
    print(f"ttt serve: export TINKER_BASE_URL={server.url} TINKER_API_KEY={shown}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        close = getattr(engine.pool.sampler, "close", None)
        if close is not None:
            close()
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(serve_main(sys.argv[1:]))
