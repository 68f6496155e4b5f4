"""The model cache: where built and converted models live, and building one there exactly once.

Shared by the embedded tiny model (inference/models.py) and the packaged models (inference/packaged_models.py).
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("TTT_CACHE_DIR", Path.home() / ".cache" / "ttt")).expanduser()


def build_once(target: Path, build) -> Path:
    """`target` (a model dir with config.json), made by `build(tmp_dir)` the first time: under a file lock, so
    concurrent runs build it once, and atomically (a rename), so a crash never leaves a half-built model."""
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").is_file():
            return target
        tmp = target.parent / f".{target.name}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            build(tmp)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
