"""What a run keeps on disk so that a crash loses nothing and `resume` continues exactly.

    out/rollouts.jsonl                  every evaluated rollout, appended (fsync) as soon as it is verified
    out/metrics.jsonl                   one line per finished step
    out/checkpoints/step_NNNNNN/        loop_state.json: step, buffer with visit counts, RNG states, best,
                                        curriculum and batch state, the training state's tinker:// path
                                        (written as .step_NNNNNN.tmp/, then renamed: never seen partial)
    out/checkpoints/latest              the name of the newest complete checkpoint (written last, atomically)

The learner's adapter + optimizer are saved through the client API (save_state), so the same files work on
Tinker's cloud; with the local backend they live under out/tinker/.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from envs.base import VerifyResult
from trainer.report import append_jsonl


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.filename is None:  # a failed write names no file; the error line should
            e.filename = str(path)
        raise


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _repair_tail(path: Path) -> None:
    """A kill -9 mid-append leaves a partial last line: cut it so the next append starts clean."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


class RolloutLog:
    """Append-only log of evaluated rollouts; on resume, a re-sampled rollout with the same (step, index, text)
    takes its logged result instead of being verified again."""

    def __init__(self, path: Path):
        self.path = path
        _repair_tail(path)
        self.cached: dict[tuple[int, int], dict] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                record = json.loads(line)
                self.cached[(record["step"], record["index"])] = record

    def lookup(self, step: int, index: int, text: str) -> VerifyResult | None:
        record = self.cached.get((step, index))
        if record is None or record["text_key"] != text_key(text):
            return None
        return VerifyResult(**{k: record[k] for k in VerifyResult.__dataclass_fields__})

    def append(self, step: int, index: int, group: int, parent_id: int, instance: int, text: str,
               result: VerifyResult, **fields) -> None:
        """`fields`: more about the rollout (e.g. the adapter version that sampled it)."""
        record = {"step": step, "index": index, "group": group, "parent_id": parent_id, "instance": instance,
                  "text_key": text_key(text), "text": text, **fields, **_jsonable(result.to_dict())}
        append_jsonl(self.path, record)
        self.cached[(step, index)] = record


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None if np.isnan(x) else (1e308 if x > 0 else -1e308)
    return x


def truncate_metrics(path: Path, before_step: int, saved: dict | None = None) -> list[dict]:
    """Keep the lines of steps < before_step (a step logged after its checkpoint was not taken is redone).
    The line of the checkpointed step itself, lost when the run died (or the disk filled) between its
    checkpoint and its line, is taken from the checkpoint `saved`."""
    _repair_tail(path)
    kept = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    kept = [r for r in kept if r["step"] < before_step]
    last = (saved or {}).get("metrics_record")
    if last is not None and last["step"] == before_step - 1 and all(r["step"] != last["step"] for r in kept):
        kept.append(last)
    if kept or path.exists():
        _atomic_write(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
    return kept


def rng_states(rng: np.random.Generator) -> dict:
    return {"numpy": rng.bit_generator.state,
            "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}


def restore_rng(rng: np.random.Generator, states: dict) -> None:
    rng.bit_generator.state = states["numpy"]
    torch.set_rng_state(torch.from_numpy(np.frombuffer(base64.b64decode(states["torch"]), dtype=np.uint8).copy()))


class Checkpoints:
    def __init__(self, out: Path, keep: int = 3):
        self.root = out / "checkpoints"
        self.keep = max(1, keep)

    def latest(self) -> dict | None:
        pointer = self.root / "latest"
        if not pointer.exists():
            return None
        return json.loads((self.root / pointer.read_text().strip() / "loop_state.json").read_text())

    def write(self, step: int, state: dict, record: dict | None = None) -> Path:
        """Write step's loop state (and its metrics `record`, for truncate_metrics) into a temporary dir,
        rename it into place, then move `latest` to it: a crash or a full disk at any point leaves the
        previous checkpoint the latest, and no partial one. Older ones beyond `keep` are removed."""
        if record is not None:
            state = {**state, "metrics_record": record}
        name = f"step_{step:06d}"
        directory, tmp, replaced = self.root / name, self.root / f".{name}.tmp", self.root / f".{name}.old"
        self.root.mkdir(parents=True, exist_ok=True)
        for leftover in (tmp, replaced):  # of a write that was interrupted
            shutil.rmtree(leftover, ignore_errors=True)
        try:
            tmp.mkdir()
            _atomic_write(tmp / "loop_state.json", json.dumps(_jsonable(state)))
            if directory.exists():  # this step, written before a crash and redone after the resume
                directory.rename(replaced)
            tmp.rename(directory)
            _fsync_dir(self.root)
            _atomic_write(self.root / "latest", name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # frees what a failed write took (e.g. on a full disk)
            shutil.rmtree(replaced, ignore_errors=True)
        older = sorted(p for p in self.root.glob("step_*") if p.name < name)
        for old in older[: max(0, len(older) - (self.keep - 1))]:
            try:
                local = json.loads((old / "loop_state.json").read_text()).get("local_training_dir")
            except (OSError, ValueError):
                local = None
            if local:
                shutil.rmtree(local, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
        return directory


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NO_SPACE_TEXT = ("No space left on device", "Disk quota exceeded", "StorageFull")  # libraries' own errors


def no_space(exc: BaseException | None) -> BaseException | None:
    """The disk-full error among `exc` and the errors it was raised from or while handling (a full disk
    usually fails the cleanup too), or None: the first one raised that names its file, else the first one.
    safetensors and others raise their own types quoting it."""
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    full = [e for e in chain
            if isinstance(e, OSError) and e.errno in NO_SPACE or any(t in str(e) for t in NO_SPACE_TEXT)]
    named = [e for e in full if getattr(e, "filename", None)]
    return (named or full)[-1] if full else None


def _full_dir(out: Path) -> Path:
    """Where the run writes, the dir on the disk that is full (a library's failed write names no file)."""
    for directory in (out / "tinker", out / "checkpoints", out):  # the learner's state is the large write
        try:
            fs = os.statvfs(directory)
        except OSError:
            continue
        if fs.f_bavail * fs.f_frsize < (1 << 20):
            return directory
    return out


def no_space_message(exc: BaseException, out: Path) -> str:
    """One line: what could not be written, what to do, and which checkpoint a resume continues from."""
    path = getattr(exc, "filename", None)
    where = f"writing {path}" if path else f"writing into {_full_dir(out)}"
    try:
        latest = Checkpoints(out).latest()
    except (OSError, ValueError):
        latest = None
    if latest is None:
        return (f"no space left on device {where}: no checkpoint was completed; free space on that disk (or "
                f"choose an out= on another one) and start the run again after removing {out}")
    return (f"no space left on device {where}: free space on that disk (or move {out} to a disk with room and "
            f"point out= at it), then rerun with resume=true to continue from the last complete checkpoint "
            f"(step {latest['step']}, intact)")


def read_checkpoint(path: str | Path) -> dict:
    """A run dir (its latest checkpoint) or one checkpoint dir -> its loop state."""
    path = Path(path)
    if (path / "checkpoints" / "latest").exists():
        path = path / "checkpoints" / (path / "checkpoints" / "latest").read_text().strip()
    state_file = path / "loop_state.json"
    if not state_file.is_file():
        raise ValueError(f"{path} is not a run checkpoint (no loop_state.json): pass a run dir or one of its "
                         "checkpoints/step_NNNNNN dirs")
    return json.loads(state_file.read_text())
