"""`ttt serve`'s metadata in SQLite: API keys, sessions, training runs, samplers and checkpoints (owner, TTL,
published flag), so that a restarted server lists and loads what the previous one saved.

The weights themselves stay in the checkpoint directory; this file only says who owns which tinker:// path.
One connection, guarded by a lock (SQLite serialises writers anyway; our statements take microseconds), in WAL
mode so that `ttt serve keys ...` in another process can read and write while the server runs (busy_timeout
covers the moments one of them holds the write lock). The schema version is PRAGMA user_version; MIGRATIONS[i]
takes a database from version i to i + 1 inside one transaction.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

MIGRATIONS: list[str] = [
    # 0 -> 1
    """
    CREATE TABLE api_keys (
        key_id TEXT PRIMARY KEY,          -- public, shown by `keys list`; owner of everything made with the key
        key_hash TEXT NOT NULL UNIQUE,    -- sha256 of the secret: the secret itself is never stored
        name TEXT NOT NULL,
        created REAL NOT NULL,
        revoked REAL
    );
    CREATE TABLE sessions (
        session_id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        created REAL NOT NULL,
        user_metadata TEXT,
        display_name TEXT,
        finished REAL
    );
    CREATE INDEX sessions_by_owner ON sessions(owner, created);
    CREATE TABLE training_runs (
        run_id TEXT PRIMARY KEY,          -- == model_id "<session_id>:train:<n>"
        session_id TEXT NOT NULL,
        owner TEXT NOT NULL,
        base_model TEXT NOT NULL,
        lora TEXT NOT NULL,               -- JSON {rank, train_mlp, train_attn, train_unembed, seed}
        created REAL NOT NULL,
        last_request REAL NOT NULL,
        user_metadata TEXT
    );
    CREATE INDEX runs_by_owner ON training_runs(owner, created);
    CREATE TABLE samplers (
        sampler_id TEXT PRIMARY KEY,
        session_id TEXT NOT NULL,
        owner TEXT NOT NULL,
        base_model TEXT NOT NULL,
        model_path TEXT,
        created REAL NOT NULL
    );
    CREATE INDEX samplers_by_session ON samplers(session_id);
    CREATE TABLE checkpoints (
        run_id TEXT NOT NULL,
        checkpoint_id TEXT NOT NULL,      -- "<kind>/<name>", kind weights | sampler_weights
        owner TEXT NOT NULL,
        created REAL NOT NULL,
        size_bytes INTEGER,
        public INTEGER NOT NULL DEFAULT 0,
        expires_at REAL,                  -- unix time; NULL = never
        user_metadata TEXT,
        PRIMARY KEY (run_id, checkpoint_id)
    );
    CREATE INDEX checkpoints_by_owner ON checkpoints(owner, created);
    CREATE INDEX checkpoints_by_expiry ON checkpoints(expires_at) WHERE expires_at IS NOT NULL;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNew(RuntimeError):
    """The database was written by a newer `ttt serve`: refuse rather than misread it."""


def _statements(script: str) -> list[str]:
    """Split a script into statements (executescript would COMMIT first, breaking the migration's
    transaction); complete_statement knows about ';' inside comments and strings."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current)
            current = ""
    return statements


def _json(value) -> str | None:
    return None if value is None else json.dumps(value)


def _unjson(text):
    return None if text is None else json.loads(text)


def default_path(checkpoint_root: str | Path) -> Path:
    """The database lives next to the checkpoint dir, as <dir>.meta.sqlite: outside the tinker:// tree, so no
    checkpoint name can ever collide with it."""
    root = Path(checkpoint_root).expanduser().resolve()
    return root.with_name(root.name + ".meta.sqlite")


class MetaDB:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: autocommit; multi-statement changes use explicit BEGIN IMMEDIATE.
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=10.0)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
            self._conn.execute("PRAGMA busy_timeout=10000")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._migrate()

    # -- plumbing ----------------------------------------------------------------------------------
    def _migrate(self) -> None:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(f"{self.path} has schema version {version}; this ttt serve knows up to "
                               f"{SCHEMA_VERSION}: upgrade ttt, or use another --db")
        for v in range(version, SCHEMA_VERSION):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                # the version is re-read inside the write lock: another process may have migrated meanwhile
                if self._conn.execute("PRAGMA user_version").fetchone()[0] != v:
                    self._conn.execute("COMMIT")
                    continue
                for statement in _statements(MIGRATIONS[v]):
                    self._conn.execute(statement)
                self._conn.execute(f"PRAGMA user_version={v + 1}")
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def schema_version(self) -> int:
        with self._lock:
            return self._conn.execute("PRAGMA user_version").fetchone()[0]

    def journal_mode(self) -> str:
        with self._lock:
            return self._conn.execute("PRAGMA journal_mode").fetchone()[0]

    def _all(self, sql: str, args=()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    def _one(self, sql: str, args=()) -> sqlite3.Row | None:
        with self._lock:
            return self._conn.execute(sql, args).fetchone()

    def _run(self, sql: str, args=()) -> int:
        with self._lock:
            return self._conn.execute(sql, args).rowcount

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- API keys ----------------------------------------------------------------------------------
    def add_key(self, key_id: str, key_hash: str, name: str) -> None:
        self._run("INSERT INTO api_keys (key_id, key_hash, name, created) VALUES (?, ?, ?, ?)",
                  (key_id, key_hash, name, time.time()))

    def key_by_hash(self, key_hash: str) -> sqlite3.Row | None:
        return self._one("SELECT * FROM api_keys WHERE key_hash = ?", (key_hash,))

    def keys(self) -> list[sqlite3.Row]:
        return self._all("SELECT * FROM api_keys ORDER BY created")

    def revoke_key(self, key_id: str) -> bool:
        return self._run("UPDATE api_keys SET revoked = ? WHERE key_id = ? AND revoked IS NULL",
                         (time.time(), key_id)) == 1

    def key_name(self, key_id: str) -> str:
        row = self._one("SELECT name FROM api_keys WHERE key_id = ?", (key_id,))
        return row["name"] if row else key_id

    # -- sessions ----------------------------------------------------------------------------------
    def add_session(self, session_id: str, owner: str, user_metadata: dict | None, display_name: str | None) -> None:
        self._run("INSERT INTO sessions (session_id, owner, created, user_metadata, display_name) "
                  "VALUES (?, ?, ?, ?, ?)", (session_id, owner, time.time(), _json(user_metadata), display_name))

    def session(self, session_id: str) -> sqlite3.Row | None:
        return self._one("SELECT * FROM sessions WHERE session_id = ?", (session_id,))

    def finish_session(self, session_id: str) -> None:
        self._run("UPDATE sessions SET finished = ? WHERE session_id = ? AND finished IS NULL",
                  (time.time(), session_id))

    def sessions(self, owner: str, limit: int, offset: int) -> list[str]:
        rows = self._all("SELECT session_id FROM sessions WHERE owner = ? ORDER BY created DESC, session_id "
                         "LIMIT ? OFFSET ?", (owner, limit, offset))
        return [r["session_id"] for r in rows]

    def session_children(self, session_id: str) -> tuple[list[str], list[str]]:
        runs = self._all("SELECT run_id FROM training_runs WHERE session_id = ? ORDER BY created", (session_id,))
        samplers = self._all("SELECT sampler_id FROM samplers WHERE session_id = ? ORDER BY created", (session_id,))
        return [r["run_id"] for r in runs], [s["sampler_id"] for s in samplers]

    # -- training runs -----------------------------------------------------------------------------
    def add_run(self, run_id: str, session_id: str, owner: str, base_model: str, lora: dict,
                user_metadata: dict | None) -> None:
        now = time.time()
        self._run("INSERT OR IGNORE INTO training_runs (run_id, session_id, owner, base_model, lora, created, "
                  "last_request, user_metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                  (run_id, session_id, owner, base_model, json.dumps(lora), now, now, _json(user_metadata)))

    def touch_run(self, run_id: str) -> None:
        self._run("UPDATE training_runs SET last_request = ? WHERE run_id = ?", (time.time(), run_id))

    def run(self, run_id: str) -> sqlite3.Row | None:
        return self._one("SELECT * FROM training_runs WHERE run_id = ?", (run_id,))

    def runs(self, owner: str, limit: int, offset: int, include_public: bool) -> tuple[list[sqlite3.Row], int]:
        where = "owner = ?"
        if include_public:  # "accessible": also runs with a published checkpoint
            where += " OR run_id IN (SELECT run_id FROM checkpoints WHERE public = 1)"
        total = self._one(f"SELECT COUNT(*) AS n FROM training_runs WHERE {where}", (owner,))["n"]
        rows = self._all(f"SELECT * FROM training_runs WHERE {where} ORDER BY created DESC, run_id "
                         "LIMIT ? OFFSET ?", (owner, limit, offset))
        return rows, total

    # -- samplers ----------------------------------------------------------------------------------
    def add_sampler(self, sampler_id: str, session_id: str, owner: str, base_model: str,
                    model_path: str | None) -> None:
        self._run("INSERT OR REPLACE INTO samplers (sampler_id, session_id, owner, base_model, model_path, created) "
                  "VALUES (?, ?, ?, ?, ?, ?)", (sampler_id, session_id, owner, base_model, model_path, time.time()))

    def sampler(self, sampler_id: str) -> sqlite3.Row | None:
        return self._one("SELECT * FROM samplers WHERE sampler_id = ?", (sampler_id,))

    # -- checkpoints -------------------------------------------------------------------------------
    def put_checkpoint(self, run_id: str, checkpoint_id: str, owner: str, size_bytes: int,
                       expires_at: float | None, user_metadata: dict | None) -> None:
        """A (re)written checkpoint: an overwrite starts private again, with the new TTL and metadata."""
        self._run("INSERT OR REPLACE INTO checkpoints (run_id, checkpoint_id, owner, created, size_bytes, public, "
                  "expires_at, user_metadata) VALUES (?, ?, ?, ?, ?, 0, ?, ?)",
                  (run_id, checkpoint_id, owner, time.time(), size_bytes, expires_at, _json(user_metadata)))

    def checkpoint(self, run_id: str, checkpoint_id: str, now: float | None = None) -> sqlite3.Row | None:
        """The live (unexpired) checkpoint row, or None."""
        return self._one("SELECT * FROM checkpoints WHERE run_id = ? AND checkpoint_id = ? AND "
                         "(expires_at IS NULL OR expires_at > ?)", (run_id, checkpoint_id, now or time.time()))

    def run_checkpoints(self, run_id: str) -> list[sqlite3.Row]:
        return self._all("SELECT * FROM checkpoints WHERE run_id = ? AND (expires_at IS NULL OR expires_at > ?) "
                         "ORDER BY created, checkpoint_id", (run_id, time.time()))

    def owner_checkpoints(self, owner: str, limit: int, offset: int) -> tuple[list[sqlite3.Row], int]:
        live = "owner = ? AND (expires_at IS NULL OR expires_at > ?)"
        now = time.time()
        total = self._one(f"SELECT COUNT(*) AS n FROM checkpoints WHERE {live}", (owner, now))["n"]
        rows = self._all(f"SELECT * FROM checkpoints WHERE {live} ORDER BY created DESC, run_id, checkpoint_id "
                         "LIMIT ? OFFSET ?", (owner, now, limit, offset))
        return rows, total

    def set_public(self, run_id: str, checkpoint_id: str, public: bool) -> bool:
        return self._run("UPDATE checkpoints SET public = ? WHERE run_id = ? AND checkpoint_id = ?",
                         (int(public), run_id, checkpoint_id)) == 1

    def set_expiry(self, run_id: str, checkpoint_id: str, expires_at: float | None) -> bool:
        return self._run("UPDATE checkpoints SET expires_at = ? WHERE run_id = ? AND checkpoint_id = ?",
                         (expires_at, run_id, checkpoint_id)) == 1

    def delete_checkpoint(self, run_id: str, checkpoint_id: str) -> bool:
        return self._run("DELETE FROM checkpoints WHERE run_id = ? AND checkpoint_id = ?",
                         (run_id, checkpoint_id)) == 1

    def expired_checkpoints(self, now: float | None = None) -> list[sqlite3.Row]:
        return self._all("SELECT * FROM checkpoints WHERE expires_at IS NOT NULL AND expires_at <= ?",
                         (now or time.time(),))


def row_metadata(row: sqlite3.Row) -> dict | None:
    return _unjson(row["user_metadata"])
