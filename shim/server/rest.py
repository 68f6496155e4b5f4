"""The SDK's RestClient calls (training runs, checkpoints, sessions), answered from the metadata database in
the SDK's own response shapes (tinker.types TrainingRun, Checkpoint, Cursor, ...), each scoped to the caller's
API key: another key's run or checkpoint is a 404, exactly like one that does not exist.

Plus checkpoint archives: GET .../checkpoints/{kind}/{name}/archive answers {"url", "expires"} (what the
SDK's get_checkpoint_archive_url accepts) with a short-lived signed URL of a tar of the checkpoint directory.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import secrets
import shutil
import time

from shim.checkpoint_paths import SCHEME
from shim.server import validate
from shim.server import wire_decode as wd
from shim.server.db import row_metadata
from shim.server.endpoints import Reply, Request, ok
from shim.server.registry import KIND_TO_TYPE, Registry

TTL_MIN_S, TTL_MAX_S = 3600, 10 * 366 * 86400  # the SDK documents 1 hour .. 10 years for set_checkpoint_ttl
ARCHIVE_URL_TTL_S = 900


def iso(t: float | None) -> str | None:
    return None if t is None else datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat()


def _page(query: dict, default_limit: int) -> tuple[int, int]:
    def number(name, default, low, high):
        raw = query.get(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise wd.BadRequest(f"query parameter {name} must be an integer, got {raw[:40]!r}") from None
        return validate.int_in(value, name, low, high)

    return number("limit", default_limit, 1, 1000), number("offset", 0, 0, 2**62)


def checkpoint_json(row) -> dict:
    kind, _, _ = row["checkpoint_id"].partition("/")
    return {"checkpoint_id": row["checkpoint_id"], "checkpoint_type": KIND_TO_TYPE[kind], "time": iso(row["created"]),
            "tinker_path": f"{SCHEME}{row['run_id']}/{row['checkpoint_id']}", "size_bytes": row["size_bytes"],
            "public": bool(row["public"]), "user_metadata": row_metadata(row), "expires_at": iso(row["expires_at"])}


class ArchiveSigner:
    """HMAC-signed, expiring download tokens: the URL alone authorises the download (as a signed cloud URL
    does), so it works from tools that cannot send X-API-Key. The secret lives in memory: a restart
    invalidates outstanding URLs, which expire within minutes anyway."""

    def __init__(self):
        self._secret = secrets.token_bytes(32)

    def sign(self, run_id: str, checkpoint_id: str, expires: int) -> str:
        message = f"{run_id}\n{checkpoint_id}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def check(self, run_id: str, checkpoint_id: str, expires: str, signature: str) -> bool:
        try:
            expires_at = int(expires)
        except ValueError:
            return False
        return expires_at > time.time() and hmac.compare_digest(self.sign(run_id, checkpoint_id, expires_at),
                                                                signature)


class RestApi:
    def __init__(self, registry: Registry, engine):
        self.registry, self.db, self.engine = registry, registry.db, engine
        self.signer = ArchiveSigner()
        ckpt = "training_runs/{run_id}/checkpoints/{kind}/{name}"
        self.routes = {
            ("GET", "training_runs"): self.list_training_runs,
            ("GET", "training_runs/{run_id}"): self.get_training_run,
            ("GET", "training_runs/{run_id}/checkpoints"): self.list_checkpoints,
            ("GET", "checkpoints"): self.list_user_checkpoints,
            ("DELETE", ckpt): self.delete_checkpoint,
            ("POST", ckpt + "/publish"): self.publish,
            ("DELETE", ckpt + "/publish"): self.unpublish,
            ("PUT", ckpt + "/ttl"): self.set_ttl,
            ("GET", ckpt + "/archive"): self.archive_url,
            ("POST", "weights_info"): self.weights_info,
            ("GET", "sessions"): self.list_sessions,
            ("GET", "sessions/{session_id}"): self.get_session,
        }

    # -- training runs -----------------------------------------------------------------------------
    def _run_json(self, row) -> dict:
        checkpoints = self.db.run_checkpoints(row["run_id"])
        last = {kind: None for kind in KIND_TO_TYPE}
        for c in checkpoints:  # oldest first: the last one of each kind wins
            last[c["checkpoint_id"].partition("/")[0]] = checkpoint_json(c)
        lora = json.loads(row["lora"])
        return {"training_run_id": row["run_id"], "base_model": row["base_model"],
                "model_owner": self.db.key_name(row["owner"]), "is_lora": True, "corrupted": False,
                "lora_rank": lora.get("rank"), "last_request_time": iso(row["last_request"]),
                "last_checkpoint": last["weights"], "last_sampler_checkpoint": last["sampler_weights"],
                "user_metadata": row_metadata(row)}

    def list_training_runs(self, r: Request) -> Reply:
        limit, offset = _page(r.query, 20)
        rows, total = self.db.runs(r.owner, limit, offset, r.query.get("access_scope") == "accessible")
        return ok({"training_runs": [self._run_json(row) for row in rows],
                   "cursor": {"offset": offset, "limit": limit, "total_count": total}})

    def get_training_run(self, r: Request) -> Reply:
        accessible = r.query.get("access_scope") == "accessible"
        return ok(self._run_json(self.registry.require_run(r.owner, r.params["run_id"], accessible)))

    # -- checkpoints -------------------------------------------------------------------------------
    def list_checkpoints(self, r: Request) -> Reply:
        run = self.registry.require_run(r.owner, r.params["run_id"])
        return ok({"checkpoints": [checkpoint_json(c) for c in self.db.run_checkpoints(run["run_id"])],
                   "cursor": None})

    def list_user_checkpoints(self, r: Request) -> Reply:
        limit, offset = _page(r.query, 100)
        rows, total = self.db.owner_checkpoints(r.owner, limit, offset)
        return ok({"checkpoints": [checkpoint_json(c) for c in rows],
                   "cursor": {"offset": offset, "limit": limit, "total_count": total}})

    def _owned(self, r: Request):
        p = r.params
        path = f"{SCHEME}{p['run_id']}/{p['kind']}/{p['name']}"
        if p["kind"] not in KIND_TO_TYPE:
            raise KeyError(f"no checkpoint at {path}")
        ref, row = self.registry.require_checkpoint(r.owner, path)
        return ref, row

    def delete_checkpoint(self, r: Request) -> Reply:
        ref, row = self._owned(r)
        delete_checkpoint(self.registry, ref.model_id, row["checkpoint_id"])
        return ok({})

    def publish(self, r: Request) -> Reply:
        # idempotent (200 when already public): the SDK retries 409, so "already public" must not be one
        ref, row = self._owned(r)
        self.db.set_public(ref.model_id, row["checkpoint_id"], True)
        return ok({})

    def unpublish(self, r: Request) -> Reply:
        ref, row = self._owned(r)
        self.db.set_public(ref.model_id, row["checkpoint_id"], False)
        return ok({})

    def set_ttl(self, r: Request) -> Reply:
        ref, row = self._owned(r)
        body = wd.parse_json(r.body)
        if "ttl_seconds" not in body:
            raise wd.BadRequest("missing field 'ttl_seconds' (null removes the expiry)")
        ttl = wd.get(body, "ttl_seconds", int, None)
        if ttl is not None:
            validate.int_in(ttl, "ttl_seconds", TTL_MIN_S, TTL_MAX_S)
        self.db.set_expiry(ref.model_id, row["checkpoint_id"], None if ttl is None else time.time() + ttl)
        return ok({})

    def weights_info(self, r: Request) -> Reply:
        path = wd.get(wd.parse_json(r.body), "tinker_path", str)
        ref, _ = self.registry.require_checkpoint(r.owner, path, allow_public=True)
        run = self.db.run(ref.model_id)
        lora = json.loads(run["lora"])
        return ok({"base_model": run["base_model"], "is_lora": True, "lora_rank": lora.get("rank"),
                   "train_unembed": lora.get("train_unembed"), "train_mlp": lora.get("train_mlp"),
                   "train_attn": lora.get("train_attn")})

    # -- archives ----------------------------------------------------------------------------------
    def archive_url(self, r: Request) -> Reply:
        ref, row = self._owned(r)
        expires = int(time.time()) + ARCHIVE_URL_TTL_S
        signature = self.signer.sign(ref.model_id, row["checkpoint_id"], expires)
        url = (f"{r.base_url}/api/v1/checkpoint_archives/{ref.model_id}/{row['checkpoint_id']}.tar"
               f"?expires={expires}&signature={signature}")
        return ok({"url": url, "expires": iso(expires)})

    def archive_path(self, run_id: str, kind: str, name: str, expires: str, signature: str):
        """The directory to tar for a signed archive URL, or None (-> 404) when the signature, expiry or
        checkpoint does not hold."""
        checkpoint_id = f"{kind}/{name}"
        if kind not in KIND_TO_TYPE or not self.signer.check(run_id, checkpoint_id, expires, signature):
            return None
        if self.db.checkpoint(run_id, checkpoint_id) is None:
            return None
        directory = self.registry.ref(run_id, kind, name).directory
        return directory if directory.is_dir() else None

    # -- sessions ----------------------------------------------------------------------------------
    def list_sessions(self, r: Request) -> Reply:
        limit, offset = _page(r.query, 20)
        return ok({"sessions": self.db.sessions(r.owner, limit, offset)})

    def get_session(self, r: Request) -> Reply:
        session_id = self.registry.require_session(r.owner, r.params["session_id"])
        row = self.db.session(session_id)
        runs, samplers = self.db.session_children(session_id)
        return ok({"training_run_ids": runs, "sampler_ids": samplers, "user_metadata": row_metadata(row),
                   "display_name": row["display_name"]})


def delete_checkpoint(registry: Registry, run_id: str, checkpoint_id: str) -> None:
    """Row first, then files: a concurrent reader sees either a live checkpoint or none, never a row whose
    directory is half gone."""
    kind, _, name = checkpoint_id.partition("/")
    registry.db.delete_checkpoint(run_id, checkpoint_id)
    shutil.rmtree(registry.ref(run_id, kind, name).directory, ignore_errors=True)


def sweep_expired(registry: Registry, now: float | None = None) -> int:
    """Delete every checkpoint whose TTL has passed -> how many."""
    expired = registry.db.expired_checkpoints(now)
    for row in expired:
        delete_checkpoint(registry, row["run_id"], row["checkpoint_id"])
    return len(expired)
