"""`tinker://<model_id>/<kind>/<name>` paths <-> directories under one checkpoint root (TINKER_API.md section 6).

Names and model ids come from clients, so they are checked against a conservative character set before they
become path components: nothing a client sends can point outside the root.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SCHEME = "tinker://"
KINDS = ("weights", "sampler_weights")  # save_state / save_weights_for_sampler
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_MODEL_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._:-]{0,199}$")


def check_name(name: str, what: str = "checkpoint name") -> str:
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise ValueError(f"bad {what} {name!r}: use 1-128 of letters, digits, '.', '_', '-'")
    return name


def check_model_id(model_id: str) -> str:
    if not isinstance(model_id, str) or not _MODEL_ID.match(model_id):
        raise ValueError(f"bad model_id {model_id!r}")
    return model_id


@dataclass(frozen=True)
class CheckpointRef:
    model_id: str
    kind: str
    name: str
    directory: Path

    @property
    def tinker_path(self) -> str:
        return f"{SCHEME}{self.model_id}/{self.kind}/{self.name}"


class CheckpointStore:
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def ref(self, model_id: str, kind: str, name: str) -> CheckpointRef:
        if kind not in KINDS:
            raise ValueError(f"bad checkpoint kind {kind!r}: use one of {KINDS}")
        check_model_id(model_id)
        check_name(name)
        return CheckpointRef(model_id, kind, name, self.root / model_id / kind / name)

    def parse(self, path: str) -> CheckpointRef:
        """A tinker:// path -> its ref; ValueError for anything else (including paths of other servers' form)."""
        if not isinstance(path, str) or not path.startswith(SCHEME):
            raise ValueError(f"checkpoint path must start with {SCHEME}, got {path!r}")
        parts = path[len(SCHEME):].split("/")
        if len(parts) != 3:
            raise ValueError(f"checkpoint path must be {SCHEME}<model_id>/<kind>/<name>, got {path!r}")
        return self.ref(*parts)

    def existing(self, path: str) -> CheckpointRef:
        ref = self.parse(path)
        if not ref.directory.is_dir():
            raise FileNotFoundError(f"no checkpoint at {path}")
        return ref

    def scratch_dir(self, model_id: str, label: str) -> Path:
        """Server-internal dirs (ephemeral sampler weights), outside the tinker:// namespace."""
        return self.root / check_model_id(model_id) / "_internal" / check_name(label, "label")
