"""Who owns what: every session, training run, sampler and checkpoint belongs to the API key that made it.

Requests name their objects by id (session_id, model_id "<session>:train:<n>", sampler id
"<session>:sample:<n>", tinker:// paths); an id the caller's key does not own is answered exactly like an
unknown one (KeyError -> 404), so a key learns nothing about another key's objects. Published checkpoints are
the one exception: anyone may load or sample them (as on Tinker).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path

from shim.checkpoint_paths import CheckpointRef, CheckpointStore
from shim.server.db import MetaDB

KIND_TO_TYPE = {"weights": "training", "sampler_weights": "sampler"}


def _session_of(object_id: str, marker: str) -> str:
    session, sep, _ = object_id.rpartition(marker)
    return session if sep else ""


def _dir_size(directory: Path) -> int:
    total = 0
    for root, _, files in os.walk(directory):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


class Registry:
    def __init__(self, db: MetaDB, store: CheckpointStore):
        self.db, self.store = db, store
        self._owners: dict[str, str] = {}  # session_id -> owner; a session never changes owner
        self._lock = threading.Lock()

    # -- access checks (KeyError = 404) --------------------------------------------------------------
    def session_owner(self, session_id: str) -> str | None:
        with self._lock:
            owner = self._owners.get(session_id)
        if owner is None and isinstance(session_id, str):
            row = self.db.session(session_id)
            if row is not None:
                owner = row["owner"]
                with self._lock:
                    self._owners[session_id] = owner
        return owner

    def require_session(self, owner: str, session_id: str) -> str:
        if self.session_owner(session_id) != owner:
            raise KeyError(f"unknown session_id {session_id!r}")
        return session_id

    def require_model(self, owner: str, model_id: str) -> str:
        if not isinstance(model_id, str) or self.session_owner(_session_of(model_id, ":train:")) != owner:
            raise KeyError(f"unknown model_id {model_id!r}")
        return model_id

    def require_sampler(self, owner: str, sampler_id: str) -> str:
        if not isinstance(sampler_id, str) or self.session_owner(_session_of(sampler_id, ":sample:")) != owner:
            raise KeyError(f"unknown sampling_session_id {sampler_id!r}")
        return sampler_id

    def require_run(self, owner: str, run_id: str, accessible: bool = False):
        """The run's row; with accessible=True also another key's run that has a published checkpoint."""
        row = self.db.run(run_id) if isinstance(run_id, str) else None
        if row is not None and (row["owner"] == owner or (accessible and any(
                c["public"] for c in self.db.run_checkpoints(run_id)))):
            return row
        raise KeyError(f"unknown training run {run_id!r}")

    def require_checkpoint(self, owner: str, path: str, allow_public: bool = False):
        """-> (CheckpointRef, row) of a live checkpoint the caller owns (or, with allow_public, one that is
        published). ValueError for a malformed path (400), KeyError for anything else (404)."""
        ref = self.store.parse(path)
        row = self.db.checkpoint(ref.model_id, f"{ref.kind}/{ref.name}")
        if row is None or not (row["owner"] == owner or (allow_public and row["public"])):
            raise KeyError(f"no checkpoint at {path}")
        if not ref.directory.is_dir():
            raise KeyError(f"no checkpoint at {path} (its files are gone)")
        return ref, row

    def ref(self, run_id: str, kind: str, name: str) -> CheckpointRef:
        return self.store.ref(run_id, kind, name)

    # -- records -----------------------------------------------------------------------------------
    def add_session(self, owner: str, session_id: str, user_metadata: dict | None, display_name: str | None):
        self.db.add_session(session_id, owner, user_metadata, display_name)
        with self._lock:
            self._owners[session_id] = owner

    def add_run(self, owner: str, model_id: str, base_model: str, lora, user_metadata: dict | None) -> None:
        lora_dict = dataclasses.asdict(lora) if dataclasses.is_dataclass(lora) else dict(vars(lora))
        self.db.add_run(model_id, _session_of(model_id, ":train:"), owner, base_model, lora_dict, user_metadata)

    def add_sampler(self, owner: str, sampler_id: str, base_model: str, model_path: str | None) -> None:
        self.db.add_sampler(sampler_id, _session_of(sampler_id, ":sample:"), owner, base_model, model_path)

    def add_checkpoint(self, owner: str, tinker_path: str, ttl_seconds: int | None,
                       user_metadata: dict | None) -> None:
        ref = self.store.parse(tinker_path)
        expires = None if ttl_seconds is None else time.time() + ttl_seconds
        self.db.put_checkpoint(ref.model_id, f"{ref.kind}/{ref.name}", owner, _dir_size(ref.directory), expires,
                               user_metadata)
