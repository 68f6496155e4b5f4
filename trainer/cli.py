"""`ttt` console script. Bad input (ValueError, missing files) ends in one `ttt: error: ...` line;
TTT_DEBUG=1 shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields


def _quiet_libraries() -> None:
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def load_config(cls, path: str | None, overrides: dict | list[str], what: str = "config"):
    """A `cls` dataclass from defaults <- YAML file <- overrides (a dict, or key=value strings), checked
    before anything starts; every problem is one ValueError line naming the fix."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    cfg = OmegaConf.structured(cls)
    try:
        if path is not None:
            try:
                loaded = OmegaConf.load(path)
            except OSError as e:
                raise ValueError(f"cannot read config {path}: {e.strerror or e}") from None
            except Exception as e:
                raise ValueError(f"config {path} is not valid YAML: {str(e).splitlines()[0]}") from None
            if not OmegaConf.is_dict(loaded):
                raise ValueError(f"config {path} must be a mapping of {cls.__name__} fields")
            cfg = OmegaConf.merge(cfg, loaded)
        if isinstance(overrides, dict):
            overrides = {k: v for k, v in overrides.items() if v is not None}
        else:
            overrides = OmegaConf.from_dotlist(list(overrides))
        cfg = OmegaConf.merge(cfg, overrides)
    except OmegaConfBaseException as e:
        allowed = ", ".join(f.name for f in fields(cls))
        raise ValueError(f"bad {what}{' ' + path if path else ''}: {str(e).splitlines()[0]} "
                         f"(fields: {allowed})") from None
    obj = OmegaConf.to_object(cfg)
    obj.check()
    return obj


DEMO_TASKS = {"ac1": ["+experiment=demo_real"], "cp": ["+experiment=demo_real", "env=cp_direct", "out=runs/demo_real_cp"],
              "code": ["+experiment=demo_real_code"]}


def _demo_overrides(args) -> list[str]:
    if args.task is not None and not args.real:
        raise ValueError("--task picks the real demo's task: pass it with --real (ttt demo --real --task cp)")
    flags = {"out": args.out, "steps": args.steps, "seed": args.seed, "model": args.model, "sampler": args.sampler}
    experiment = DEMO_TASKS[args.task or "ac1"] if args.real else ["+experiment=demo"]
    return experiment + [f"{k}={v}" for k, v in flags.items() if v is not None] + (
        ["resume=true"] if args.resume else [])


def cmd_demo(args) -> int:
    """`ttt train +experiment=demo`, with flags; a previous demo run in the same dir is replaced."""
    import shutil
    from pathlib import Path

    from trainer.config import compose

    cfg = compose(_demo_overrides(args))
    out = Path(cfg.out)
    if not args.resume and (out / "metrics.jsonl").exists() and (out / "config.json").exists():
        print(f"ttt demo: replacing the previous run in {out} (pass --resume to continue it)", flush=True)
        shutil.rmtree(out)
    print(f"ttt demo: {cfg.env_name} on model '{cfg.base_model}' with {cfg.sampler}, {cfg.steps} steps of "
          f"{cfg.groups} groups x {cfg.group_size} samples -> {cfg.out}", flush=True)
    return _run_and_report(cfg)


def cmd_train(args) -> int:
    """`ttt train [+experiment=NAME] [key=value ...]` (Hydra overrides of trainer.config.TrainConfig)."""
    from trainer.config import compose

    cfg = compose(args.overrides)
    if os.environ.get("RANK", "0") != "0":  # accelerate launch: the other ranks only replay rank 0's learner
        from trainer.loop import run

        run(cfg)
        return 0
    print(f"ttt train: {cfg.mode} on {cfg.env_name} with {cfg.base_model} ({cfg.backend} backend, "
          f"{cfg.sampler if cfg.backend == 'local' else cfg.base_url or 'Tinker cloud'}), {cfg.steps} steps of "
          f"{cfg.groups} x {cfg.group_size} -> {cfg.out}", flush=True)
    return _run_and_report(cfg)


def _run_and_report(cfg) -> int:
    import logging
    from pathlib import Path

    from trainer.checkpoint import no_space, no_space_message
    from trainer.loop import run

    # a library's log file on a full disk would print a traceback per record (wandb's debug.log)
    logging.raiseExceptions = bool(os.environ.get("TTT_DEBUG"))
    try:
        records = run(cfg)
    except Exception as e:  # a full disk: one line with the fix, not the chain of everything that then failed
        full = no_space(e)
        if full is None or os.environ.get("TTT_DEBUG"):
            raise
        raise ValueError(no_space_message(full, Path(cfg.out))) from None
    if not records:
        print(f"nothing to do: {cfg.out} already finished {cfg.steps} steps")
        return 0
    first, last = records[0], records[-1]
    best = "none valid" if last["best_reward"] is None else f"{last['best_reward']:.4f} (score {last['best_score']})"
    print(f"mean reward {first['reward_mean']:.4f} -> {last['reward_mean']:.4f}; best {best}; "
          f"wrote {cfg.out}/metrics.jsonl, best.json, learning_curve.png and checkpoints/")
    return 0


def cmd_eval(args) -> int:
    """`ttt eval key=value ...` (Hydra-style overrides of trainer.evaluate.EvalConfig)."""
    from trainer.evaluate import EvalConfig, evaluate

    bad = [a for a in args.overrides if "=" not in a]
    if bad:
        raise ValueError(f"ttt eval takes key=value overrides, got {bad[0]!r} (e.g. checkpoint=runs/demo/adapters/v12)")
    cfg = load_config(EvalConfig, None, args.overrides, what="eval override")
    summary = evaluate(cfg)
    print(f"ttt eval: {summary['env']} with {summary['checkpoint'] or 'the base model'}: n={summary['n']}, "
          f"best reward {summary['reward_best']:.4f} (score {summary['best_score']}), mean "
          f"{summary['reward_mean']:.4f}, valid rate {summary['valid_rate']:.2f}; wrote {cfg.out}/summary.json")
    if summary["run_best"] is not None:
        rb = summary["run_best"]
        print(f"the run's best (step {rb['step']}), verified again: reward {rb['reward']:.4f} (score {rb['score']}, "
              f"{rb['status']}); logged {rb['logged_reward']:.4f}")
    return 0


def cmd_sft(args) -> int:
    """`ttt sft data.jsonl [--out DIR] [key=value ...]` (overrides of trainer.sft.SFTConfig)."""
    from trainer.sft import SFTConfig, run_sft

    bad = [a for a in args.overrides if "=" not in a]
    if bad:
        raise ValueError(f"ttt sft takes one data file and key=value overrides, got {bad[0]!r} (e.g. epochs=3)")
    given = {"data": args.data, "out": args.out}
    overrides = args.overrides + [f"{k}={v}" for k, v in given.items() if v is not None]
    cfg = load_config(SFTConfig, None, overrides, what="sft override")
    summary = run_sft(cfg)
    print(f"loss {summary['loss_before']:.4f} -> {summary['loss_after']:.4f} (mean NLL per answer token, before "
          f"-> after); adapter {summary['state_path']} (sampler {summary['sampler_path']}); wrote {cfg.out}/"
          f"adapter.json and metrics.jsonl; start RL from it with: ttt train init_adapter={cfg.out} "
          f"base_model={cfg.base_model} lora_rank={cfg.lora_rank}")
    return 0


def cmd_serve_vllm(args) -> int:
    """Start a vLLM OpenAI server with runtime LoRA loading and keep it in the foreground."""
    from inference.models import resolve_model
    from inference.vllm_server import VLLMServer

    extra = tuple(args.vllm_args[1:] if args.vllm_args[:1] == ["--"] else args.vllm_args)
    server = VLLMServer(resolve_model(args.model), host=args.host, port=args.port, log_path=args.log,
                        max_lora_rank=args.max_lora_rank, dtype=args.dtype, max_model_len=args.max_model_len,
                        gpu_memory_utilization=args.gpu_memory_utilization, seed=args.seed, extra_args=extra)
    import signal

    def _terminate(signum, _frame):  # Slurm and systemd stop with SIGTERM: stop the server we started too
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _terminate)
    print(f"ttt serve-vllm: starting {' '.join(server.command())}", flush=True)
    server.start()
    print(f"ttt serve-vllm: ready at {server.url} (log {server.log_path}); Ctrl-C stops it", flush=True)
    try:
        return server.proc.wait()
    finally:
        server.stop()


# Subcommands whose own parser lives with the code they run (envs knows nothing of the trainer).
DELEGATED = {
    "serve": ("shim.server.main", "serve_main", "an HTTP server speaking Tinker's wire protocol over local GPUs"),
    "verify": ("envs.cli", "verify_main", "verify a program or construction in the sandbox"),
    "render": ("envs.cli", "render_main", "draw a construction to PNG"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ttt", description="Test-time RL on verifiable problems.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the RL loop on the embedded tiny model and the toy task (--real: a "
                                       "pretrained model on a discovery task)")
    demo.add_argument("--real", action="store_true",
                      help="SmolLM2-135M-Instruct improves a 12-piece AC1 step function (~4 min on 2 cores)")
    demo.add_argument("--task", choices=sorted(DEMO_TASKS), default=None,
                      help="with --real: ac1 (default), cp (circle centres) or code (Python functions with hidden "
                           "tests, ~15 min)")
    demo.add_argument("--out", default=None, help="output dir (default runs/demo; with --real runs/demo_real, "
                                                  "runs/demo_real_cp or runs/demo_real_code)")
    demo.add_argument("--steps", type=int, default=None)
    demo.add_argument("--seed", type=int, default=None)
    demo.add_argument("--model", default=None, help="'tiny' (default), a local HF dir or a hub name")
    demo.add_argument("--sampler", choices=["vllm", "hf"], default=None)
    demo.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    demo.set_defaults(func=cmd_demo)

    train = sub.add_parser("train", help="the TTT loop: ttt train [+experiment=NAME] [key=value ...]")
    train.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. +experiment=seeds_cp26 env=ac1 steps=3")
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="evaluate a saved adapter (or the base model) offline")
    ev.add_argument("overrides", nargs="*", help="key=value, e.g. checkpoint=DIR env=toy_digits n=64")
    ev.set_defaults(func=cmd_eval)

    sft = sub.add_parser("sft", help="train a LoRA on chat demonstrations: ttt sft data.jsonl [--out DIR] [key=value ...]")
    sft.add_argument("data", help='JSONL, one {"messages": [{"role": ..., "content": ...}, ...]} per line')
    sft.add_argument("--out", default=None, help="output dir (default runs/sft)")
    sft.add_argument("overrides", nargs="*", help="key=value, e.g. base_model=HuggingFaceTB/SmolLM2-135M-Instruct "
                     "lora_rank=8 epochs=3 learning_rate=1e-4")
    sft.set_defaults(func=cmd_sft)

    serve = sub.add_parser("serve-vllm", help="start a vLLM OpenAI server with runtime LoRA loading")
    serve.add_argument("--model", default="tiny")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-lora-rank", type=int, default=8)
    serve.add_argument("--dtype", default="float32")
    serve.add_argument("--max-model-len", type=int, default=512)
    serve.add_argument("--gpu-memory-utilization", type=float, default=0.1)
    serve.add_argument("--seed", type=int, default=0)
    serve.add_argument("--log", default="vllm_server.log")
    serve.add_argument("vllm_args", nargs=argparse.REMAINDER, help="after --: passed to vLLM unchanged")
    serve.set_defaults(func=cmd_serve_vllm)

    for name, (_, _, help_text) in DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)  # listed in --help; dispatched in main()
    return parser


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in DELEGATED:
        import importlib

        module, func, _ = DELEGATED[argv[0]]
        return getattr(importlib.import_module(module), func)(argv[1:])
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "sft" and not any(e.startswith("-") for e in extra):
        args.overrides += extra  # key=value after --out DIR: argparse does not intermix positionals and options
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command in ("train", "demo", "eval", "sft", "serve-vllm"):  # they start vLLM, Ray, workers
        from trainer import supervisor

        # before any child exists: every child dies with this process, also on kill -9
        supervisor.start({"train": "rerun the same command with resume=true",
                          "demo": "rerun the same command with --resume"}.get(args.command, "rerun the same command"))
    if args.command in ("train", "demo", "eval", "sft"):
        _exit_without_finalizers(_dispatch(args))
    return _dispatch(args)


def _exit_without_finalizers(code: int) -> None:
    """Everything the run owns is closed by now. Interpreter finalization after the learner ran in a worker
    thread intermittently aborts in C++ static destructors ('terminate called without an active exception',
    SIGABRT), which would turn a finished run into exit 134; so flush, stop Ray, and leave directly."""
    import logging

    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception:  # noqa: BLE001 - exiting anyway
        pass
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    from trainer import supervisor

    supervisor.finished()  # os._exit skips atexit: tell the watchdog this end is on purpose
    os._exit(code)


def _dispatch(args) -> int:
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        if os.environ.get("TTT_DEBUG"):
            raise
        print(f"ttt: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # a run that stopped itself for a stated reason (e.g. SamplerMismatch)
        if os.environ.get("TTT_DEBUG") or type(e) is RuntimeError:
            raise
        print(f"ttt: stopped: {e}", file=sys.stderr)
        return 143 if type(e).__name__ == "Preempted" else 3
    except KeyboardInterrupt:
        print("ttt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
