"""What a run keeps on disk so that a crash loses nothing and `resume` continues exactly.

    out/rollouts.jsonl                  every evaluated rollout, appended (fsync) as soon as it is verified
    out/metrics.jsonl                   one line per finished step
    out/checkpoints/step_NNNNNN/        loop_state.json: step, buffer with visit counts, RNG states, best,
                                        curriculum and batch state, the training state's tinker:// path
    out/checkpoints/latest              the name of the newest complete checkpoint (written last, atomically)

The learner's adapter + optimizer are saved through the client API (save_state), so the same files work on
Tinker's cloud; with the local backend they live under out/tinker/.
"""

from __future__ import annotations

import base64
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
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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


def truncate_metrics(path: Path, before_step: int) -> list[dict]:
    """Keep the lines of steps < before_step (a step logged after its checkpoint was not taken is redone)."""
    _repair_tail(path)
    if not path.exists():
        return []
    kept = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    kept = [r for r in kept if r["step"] < before_step]
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

    def write(self, step: int, state: dict) -> Path:
        """Write step's loop state, then move `latest` to it; older ones beyond `keep` are removed."""
        name = f"step_{step:06d}"
        directory = self.root / name
        directory.mkdir(parents=True, exist_ok=True)
        _atomic_write(directory / "loop_state.json", json.dumps(_jsonable(state)))
        _atomic_write(self.root / "latest", name)
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
