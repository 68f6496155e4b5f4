"""API keys of `ttt serve`: generated in the SDK's `tml-` form (the official SDK refuses other keys before it
sends anything), stored as sha256 hashes in the metadata database, each owning the sessions, runs and
checkpoints made with it. `ttt serve keys add|list|revoke` manages them, also while the server runs.
"""

from __future__ import annotations

import argparse
import hashlib
import secrets

from shim.server.db import MetaDB

PREFIX = "tml-"


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def key_id_of(key: str) -> str:
    """A short public id derived from the key: what logs, listings and ownership columns show."""
    return "k-" + key_hash(key)[:12]


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def add_key(db: MetaDB, name: str, key: str | None = None) -> tuple[str, str]:
    """Store `key` (or a new one) -> (key, key_id). Adding a key that is already there is a no-op."""
    key = key or new_key()
    if not key.startswith(PREFIX):
        raise ValueError(f"API keys must start with {PREFIX!r} (the tinker SDK refuses others)")
    kid = key_id_of(key)
    if db.key_by_hash(key_hash(key)) is None:
        db.add_key(kid, key_hash(key), name)
    return key, kid


class KeyRing:
    """X-API-Key -> owner (key_id), or None for unknown and revoked keys. Every request reads the database
    (an indexed lookup, microseconds), so a revocation by `ttt serve keys revoke` in another process applies
    to the very next request."""

    def __init__(self, db: MetaDB):
        self.db = db

    def owner(self, key: str) -> str | None:
        if not key:
            return None
        row = self.db.key_by_hash(key_hash(key))
        if row is None or row["revoked"] is not None:
            return None
        return row["key_id"]


def keys_main(argv: list[str], default_db) -> int:
    """`ttt serve keys add [--name N] | list | revoke KEY_ID_OR_KEY` on --db (default: next to
    --checkpoint-dir)."""
    p = argparse.ArgumentParser(prog="ttt serve keys", description="manage the API keys of a ttt serve database")
    p.add_argument("--db", default=None, help="metadata database (default: <checkpoint-dir>.meta.sqlite)")
    p.add_argument("--checkpoint-dir", default=None, help="the server's --checkpoint-dir, to find its database")
    sub = p.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", help="create a key (printed once; only its hash is stored)")
    add.add_argument("--name", default="default")
    sub.add_parser("list", help="key ids, names, creation and revocation times")
    revoke = sub.add_parser("revoke", help="revoke a key: its next request gets 401")
    revoke.add_argument("key", help="the key id (k-...) or the key itself")
    args = p.parse_args(argv)
    db = MetaDB(args.db or default_db(args.checkpoint_dir))
    try:
        if args.action == "add":
            key, kid = add_key(db, args.name)
            print(f"{kid} {key}")
        elif args.action == "list":
            import datetime

            def when(t):
                return "-" if t is None else datetime.datetime.fromtimestamp(t).isoformat(timespec="seconds")

            for row in db.keys():
                state = "revoked " + when(row["revoked"]) if row["revoked"] else "active"
                print(f"{row['key_id']}\t{row['name']}\tcreated {when(row['created'])}\t{state}")
        else:
            kid = args.key if args.key.startswith("k-") else key_id_of(args.key)
            if not db.revoke_key(kid):
                print(f"ttt serve keys: no active key {kid}")
                return 1
            print(f"revoked {kid}")
    finally:
        db.close()
    return 0
