"""`ttt verify` and `ttt render`: check or draw one program or construction, as in training.

    ttt verify --env circle_packing --n 26 [--timeout SECONDS] [--sandbox-isolation LEVEL] PATH
    ttt render --env circle_packing --n 26 PATH [--out FILE.png]     PATH = program.py or construction.json

A run's best.json of a program task ({"program": ..., "task_id": ...}) verifies its program again.
A construction file is a JSON list or object in the AlphaEvolve or TTT-Discover layout: circle packings as
rows [x, y, r], {"circles": rows} or {"centers", "radii"}; sequences as a list, {"sequence": ...} (TTT-Discover's
results/mathematics/*.json), {"heights": ...}, {"values": ...} or, for erdos, {"h_values": ...}.

`verify` prints exactly one JSON object (status, score, reward, value, message, ...) and exits 0 when the
status is ok, 1 when the answer was verified and failed, 2 on bad input (unknown env, bad option, unreadable
file): bad input is a one-line error record, never a traceback. Programs run in the same sandbox as training,
at the isolation level named by --sandbox-isolation (strict by default); a host that cannot keep it gets a
one-line error record naming what is missing (exit 2), and the program does not run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from envs import render
from envs.base import State, VerifyResult
from envs.registry import ENVS, make_env
from envs.sandbox import isolation
from envs.user_input import InputError, read_input, verify_construction


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print usage + exit 2; we want one record
        raise InputError(f"{self.prog}: {message}")


def _parser(prog: str) -> _Parser:
    p = _Parser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--env", required=True, help=f"one of: {', '.join(ENVS)}")
    p.add_argument("--n", type=int, help="number of circles (circle_packing)")
    p.add_argument("--timeout", type=float, help="time limit in seconds for a program")
    p.add_argument("--task", help="task id for code (e.g. lis/0) and arc (e.g. c8f0f002)")
    p.add_argument("--dataset", help="dataset for tabular (e.g. breast_cancer)")
    p.add_argument("--sandbox-isolation", default=isolation.DEFAULT, choices=isolation.LEVELS,
                   help="the isolation a program must run under (weaker levels only by name; see the README)")
    p.add_argument("path", help="a program (.py) or a construction (.json)")
    return p


def build_env(args: argparse.Namespace):
    if args.env not in ENVS:
        raise InputError(f"unknown env {args.env!r}; choose one of {', '.join(ENVS)}")
    params: dict[str, Any] = {}
    if args.n is not None:
        if args.env != "circle_packing":
            raise InputError("--n applies to circle_packing only")
        params["n"] = args.n
    if args.timeout is not None:
        if not (math.isfinite(args.timeout) and args.timeout > 0):
            raise InputError(f"--timeout must be a positive number of seconds, got {args.timeout}")
        params["timeout_s"] = args.timeout
    if args.dataset is not None:
        params["dataset"] = args.dataset
    if args.task is not None and args.env == "arc":
        params["task_ids"] = [args.task]
    if args.task is not None and args.env == "code":
        family, _, index = args.task.partition("/")
        if not index.isdigit():
            raise InputError(f"--task for code looks like 'lis/0', got {args.task!r}")
        params.update(families=[family], problems_per_family=int(index) + 1)
    try:
        return make_env(args.env, **params)
    except (ValueError, TypeError) as e:
        raise InputError(f"bad parameters for {args.env}: {e}") from None


def _record(result: VerifyResult, env_name: str, path: str) -> dict:
    record = {"status": result.status, "score": result.score, "reward": result.reward, "value": result.value,
              "message": result.message, "wall_s": round(result.wall_s, 4), "env": env_name, "path": path}
    extra = {k: v for k, v in result.extra.items() if k != "stderr_tail" and isinstance(v, (int, float, str, bool))}
    if extra:
        record["extra"] = extra
    if result.stdout_tail:
        record["stdout_tail"] = result.stdout_tail
    return record


def _finite(x: Any) -> Any:
    """JSON has no NaN/inf: print them as null, at any depth."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _print(record: dict) -> None:
    print(json.dumps(_finite(record), default=str, allow_nan=False))


def _error(message: str) -> int:
    _print({"status": "error", "score": None, "message": message})
    return 2


def run_verify(args: argparse.Namespace) -> VerifyResult:
    env = build_env(args)
    text = read_input(args.path)
    state = State(task_id=args.task or "")
    if args.path.endswith(".json"):
        try:
            data = json.loads(text)
        except ValueError as e:
            raise InputError(f"{args.path} is not valid JSON ({e})") from None
        if isinstance(data, dict) and isinstance(data.get("program"), str):  # a run's best.json: its program
            if not args.task and data.get("task_id"):
                env = build_env(argparse.Namespace(**{**vars(args), "task": data["task_id"]}))
            return env.verify(data["program"], State(task_id=args.task or data.get("task_id") or ""))
        return verify_construction(env, data)
    if env.name == "toy_digits":
        return env.evaluate(text, state)
    return env.verify(text, state)


def verify_main(argv: list[str]) -> int:
    try:
        args = _parser("ttt verify").parse_args(argv)
        with isolation.level(args.sandbox_isolation):
            result = run_verify(args)
    except isolation.IsolationError as e:
        return _error(e.line("--sandbox-isolation {}"))
    except InputError as e:
        return _error(str(e))
    except Exception as e:  # a bug here must still answer with one record, not a traceback
        return _error(f"internal error: {type(e).__name__}: {e}")
    _print(_record(result, args.env, args.path))
    return 0 if result.ok else 1


def render_main(argv: list[str]) -> int:
    try:
        parser = _parser("ttt render")
        parser.add_argument("--out", help="PNG to write (default: PATH with .png)")
        args = parser.parse_args(argv)
        env = build_env(args)
        out = args.out or os.path.splitext(args.path)[0] + ".png"
        with isolation.level(args.sandbox_isolation):
            info = render.render(env, args, out)
    except isolation.IsolationError as e:
        return _error(e.line("--sandbox-isolation {}"))
    except InputError as e:
        return _error(str(e))
    except Exception as e:
        return _error(f"internal error: {type(e).__name__}: {e}")
    _print({"status": "ok", "score": info.get("score"), "message": info.get("message", ""), "png": out})
    return 0


if __name__ == "__main__":  # python -m envs.cli verify|render ...
    commands = {"verify": verify_main, "render": render_main}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(_error("usage: python -m envs.cli verify|render [options] PATH"))
    sys.exit(commands[sys.argv[1]](sys.argv[2:]))
