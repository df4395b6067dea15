"""The LMDB store: every job record, manifest entry and event of a data dir.

This docstring is THE description of the stored format.  Bump
``SCHEMA_VERSION`` on any incompatible change; a store with a version this
code does not know is refused (``StoreError``), never guessed at.

Environment: ``DATA/store/`` (``data.mdb``, ``lock.mdb``), one per process,
opened with ``max_dbs`` for the named sub-databases below.  Every commit is
synchronous (``sync=True``): a write transaction that returned is on disk.
Writes that happen per file (manifest entries) are therefore batched by the
caller (``manifest.ManifestWriter``) into one transaction per batch.

Sub-databases (keys are bytes; values msgpack unless said otherwise):

``meta``
    ``b"schema"``  -> int, ``SCHEMA_VERSION``.
    ``b"mount"``   -> ``{"state": "live"|"clean", "pid", "since", "mountpoint"}``;
                      ``live`` while a daemon serves the store.  A mount that
                      finds ``live`` knows the previous one crashed (docs/spec.md §7).
    ``b"event_seq"`` -> int, the last event sequence number used.
    ``b"counters"`` -> ``{name: int}``: rejected writes, failed removals ...
    ``b"totals"``  -> ``{"states": {state: n}, "live": n, "bytes": n, "files": n,
                      "users": {uid (str): [live, bytes, files]}}``: kept in step by
                      ``put_job`` so status, ``max_jobs`` and the per-user limits
                      cost O(1), not O(jobs).  ``live`` counts records whose
                      tree exists (``where`` set); ``users`` splits the same by owner
                      (schema 2; the migration from 1 counts it once).
``jobs``
    job id (ASCII) -> the job record: a map of ``model.JobRecord``'s fields
    (``JobRecord.to_stored``; ``from_stored`` reads it back).  Records
    are never deleted: an id is used once, even after archive or purge.
    Optional fields, absent from records that do not need them (None in a
    ``JobRecord``; no schema bump, old records stay valid):
      ``git``    -> ``{"repo", "branch", "base", "base_commit"}`` (str each, any
                    may be missing): a development workspace whose ``src/`` is a
                    git worktree (README "Parallel development workspaces").  Set at creation from the
                    ``create``/``clone`` command's ``git_*`` options; the daemon
                    stores it and never runs git.
      ``origin`` -> job id (str): the workspace this one was cloned from
                    (``clone SRC NEW``, wsfs.cloning).
      ``setup``  -> str: the template's setup command at creation, which
                    ``wsfs create`` runs as the user.
      ``labels`` -> ``{KEY: text}``: free labels given at creation (a scheduler's
                    job id, partition ...).
      ``max_running`` -> float seconds or None: the lease of a running job; its
                    end is ``expires_at`` while it runs (the sweeper crashes it
                    past that, reason "lease expired"), and ``extensions``
                    (int) counts the ``extend`` commands that pushed it.
      ``notified`` -> ``{"hide"|"purge": expires_at}``: the deadline whose
                    ``on_expiring`` notice ran (wsfs.retention): once per deadline.
      ``area_usage`` -> ``{area: [bytes, files]}``: ``usage`` split by area, kept
                    by the manifest batches, so completion takes a scratch
                    area off in one subtraction (records made before it lack
                    an area until its first change; the scratch step counts it).
``manifest``
    job id + ``b"\\0"`` + path (``AREA/rel/path``, UTF-8 with surrogateescape)
    -> ``[size, mtime_ns, ino, sha256 (32 bytes) or None]``.  One entry per
    regular file in the job's tree.  A path longer than ``PATH_KEY_BYTES``
    (360) bytes is keyed by its first 360 bytes, ``b"\\xff"`` and the 16-byte
    BLAKE2b of the whole path, and its entry carries the whole path as a
    fifth element (schema 2: a job holds every path the disk does, PATH_MAX
    and deeper, while an LMDB key is at most 511 bytes and a job id 128).
    Readers give every entry as ``(path, [size, mtime_ns, ino, sha256])``,
    sorted by path bytes.  ``sha256`` is valid only while the file's
    (size, mtime_ns, ino) equal the stored ones.  Invariant: the record's
    ``usage`` equals the sum over the job's entries once the caller's pending
    batch is flushed, except for a completed job's scratch areas, whose
    entries may wait in that batch after their usage left the record.
``events``
    8-byte big-endian sequence number -> ``{"seq", "t", "kind", "job", ...}``.
    Only the newest ``MAX_EVENTS`` are kept.
``expiry``
    8-byte big-endian time in milliseconds + job id -> ``b""``.  One key per job
    that has a retention deadline, or, running, a lease end (``expires_at``); written in the same transaction as the
    record, so the sweeper finds due jobs by a range scan (cost O(due)).
``pending``
    job id -> ``b""`` for every job with a transition in flight (the record's
    ``pending`` says which and how far).  Recovery finishes each on mount.
``owners``
    job id -> ``{"pid", "create_time"}`` for every running job with an owner
    process, so the sweeper's liveness check costs O(owned jobs).
``publish``
    job id -> float, the time of the job's next publishing attempt (0: now),
    for every job whose record's ``publish.status`` is ``pending``; kept in
    step by ``put_job``, so the publisher (``wsfs.publish``) finds its work
    in O(pending publishes), and a mount resumes what a crash interrupted.
    The record's ``publish`` (None when the job never published) is
    ``{"status": "pending"|"done"|"failed", "attempts", "error", "next_at",
    "targets": [{"area", "to", "mode", "replace", "status", "dest", "error"}],
    "hooks": {HOOK: {"status", "exit", "error"}}, "moved": [AREA],
    "deleted_at", "done_at"}``.
``receipts``
    job id -> the bytes of ``receipt.json``, kept for a job whose tree was
    deleted after publishing (``completed = "after-publish"``): the record
    and its receipt outlive the workspace.

Threading: any thread may open a read transaction; write transactions are
serialized by ``write_lock`` (LMDB allows one writer) and stay on their
thread.  When the map is full the writer doubles it under ``_gate``, which
every transaction holds shared (py-lmdb: ``set_mapsize`` needs no live
transaction in the process).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import struct
import threading
import time
import typing
from collections.abc import Iterator

import lmdb
import msgpack

from .errors import StoreError
from .model import JobRecord

SCHEMA_VERSION = 2
#: Store versions this code migrates on a writable open (``_migrate``); a read-only open reads them as they are.
_MIGRATES_FROM = (1,)
MAX_EVENTS = 10_000
INITIAL_MAP_SIZE = 1 << 30  # grows by doubling on MapFullError
_DBS = (b"meta", b"jobs", b"manifest", b"events", b"expiry", b"pending", b"owners", b"publish", b"receipts")
_U64 = struct.Struct(">Q")
#: Sub-databases added after the first release: a read-only open of an older store does without them.
_LATER_DBS = (b"publish", b"receipts")


def pack(value) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def unpack(data: bytes):
    return msgpack.unpackb(data, raw=False)


#: Manifest paths up to this many bytes are keys as they are; longer ones are cut and hashed (see above).
PATH_KEY_BYTES = 360


def manifest_key(job_id: str, path: str) -> bytes:
    raw = path.encode("utf-8", "surrogateescape")
    if len(raw) > PATH_KEY_BYTES:
        raw = raw[:PATH_KEY_BYTES] + b"\xff" + hashlib.blake2b(raw, digest_size=16).digest()
    return job_id.encode() + b"\0" + raw


def _scan_start(job_id: str, prefix: str) -> bytes:
    """Where the keys of every path that starts with ``prefix`` begin (cut as the keys are)."""
    return job_id.encode() + b"\0" + prefix.encode("utf-8", "surrogateescape")[:PATH_KEY_BYTES]


def _manifest_item(base: int, key: bytes, raw: bytes) -> tuple[str, list]:
    """(path, entry) of a stored manifest item, the long form's path taken out of the entry."""
    entry = unpack(raw)
    if len(entry) > 4:
        return entry.pop(), entry
    return key[base:].decode("utf-8", "surrogateescape"), entry


def _manifest_value(path: str, entry: list) -> bytes:
    if len(path.encode("utf-8", "surrogateescape")) > PATH_KEY_BYTES:
        return pack([*entry[:4], path])
    return pack(entry)


#: LMDB's longest key (MDB_MAXKEYSIZE as py-lmdb builds it: ``Environment.max_key_size()``).
MAX_KEY_BYTES = 511
#: Below this much free space a commit that failed is put down to a full disk (ENOSPC), not to
#: the disk itself (EIO): LMDB reports a short write as EIO.
_FULL_BELOW = 4 << 20


def expiry_key(when: float, job_id: str) -> bytes:
    return _U64.pack(max(int(when * 1000), 0)) + job_id.encode()


class RWLock:
    """Many readers or one writer; writers are not starved by new readers."""

    __slots__ = ("_cond", "_readers", "_writer", "_waiting_writers", "__weakref__")

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextlib.contextmanager
    def shared(self):
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self):
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class Reader:
    """Read access inside one LMDB read transaction."""

    def __init__(self, store: Store, txn: lmdb.Transaction):
        self._store = store
        # py-lmdb's types answer bytes | memoryview for every read (memoryview when buffers=True);
        # no transaction here has buffers=True, so reads are bytes: the transaction is taken untyped.
        self.txn: typing.Any = txn

    def _get(self, db: bytes, key: bytes):
        raw = self.txn.get(key, db=self._store.dbs[db])
        return None if raw is None else unpack(raw)

    def job(self, job_id: str) -> JobRecord | None:
        stored = self._get(b"jobs", job_id.encode())
        return None if stored is None else JobRecord.from_stored(stored)

    def meta(self, name: str, default=None):
        value = self._get(b"meta", name.encode())
        return default if value is None else value

    def jobs(self) -> Iterator[JobRecord]:
        with self.txn.cursor(db=self._store.dbs[b"jobs"]) as cursor:
            for _key, raw in cursor:
                yield JobRecord.from_stored(unpack(raw))

    def job_ids(self) -> Iterator[str]:
        with self.txn.cursor(db=self._store.dbs[b"jobs"]) as cursor:
            for key in cursor.iternext(keys=True, values=False):
                yield key.decode()

    def manifest(self, job_id: str, under: str = "") -> Iterator[tuple[str, list]]:
        """(path, [size, mtime_ns, ino, sha256]) for a job, sorted by path; only below ``under`` if given.

        Long paths sharing their first ``PATH_KEY_BYTES`` bytes lie together in key order, sorted
        by hash: each such run is sorted by path before it is given."""
        base = len(job_id) + 1
        under = under + "/" if under else ""
        start = _scan_start(job_id, under)
        run: list[tuple[bytes, str, list]] = []
        with self.txn.cursor(db=self._store.dbs[b"manifest"]) as cursor:
            if not cursor.set_range(start):
                return
            for key, raw in cursor:
                if not key.startswith(start):
                    break
                path, entry = _manifest_item(base, key, raw)
                if under and not path.startswith(under):
                    continue  # a long path that shares only its cut part with ``under``
                if len(key) - base > PATH_KEY_BYTES:
                    if run and run[0][0] != key[:base + PATH_KEY_BYTES]:
                        yield from self._sorted_run(run)
                    run.append((key[:base + PATH_KEY_BYTES], path, entry))
                    continue
                if run:
                    yield from self._sorted_run(run)
                yield path, entry
        if run:
            yield from self._sorted_run(run)

    @staticmethod
    def _sorted_run(run: list) -> Iterator[tuple[str, list]]:
        run.sort(key=lambda item: item[1].encode("utf-8", "surrogateescape"))
        for _cut, path, entry in run:
            yield path, entry
        run.clear()

    def manifest_entry(self, job_id: str, path: str) -> list | None:
        raw = self.txn.get(manifest_key(job_id, path), db=self._store.dbs[b"manifest"])
        return None if raw is None else _manifest_item(0, b"", raw)[1]

    def events(self, since: int = 0, limit: int | None = None) -> list[dict]:
        """Events with seq > since, oldest first; the newest ``limit`` if given."""
        out: list[dict] = []
        with self.txn.cursor(db=self._store.dbs[b"events"]) as cursor:
            if limit is not None:
                if not cursor.last():
                    return out
                for key, raw in cursor.iterprev():
                    if _U64.unpack(key)[0] <= since or len(out) >= limit:
                        break
                    out.append(unpack(raw))
                out.reverse()
                return out
            if cursor.set_range(_U64.pack(since + 1)):
                out.extend(unpack(raw) for _key, raw in cursor)
        return out

    def due(self, now: float) -> Iterator[tuple[float, str]]:
        """(deadline, job id) of every expiry key at or before ``now``."""
        end = _U64.pack(int(now * 1000))
        with self.txn.cursor(db=self._store.dbs[b"expiry"]) as cursor:
            if not cursor.first():
                return
            for key in cursor.iternext(keys=True, values=False):
                if key[:8] > end:
                    break
                yield _U64.unpack(key[:8])[0] / 1000, key[8:].decode()

    def owners(self) -> list[tuple[str, dict]]:
        with self.txn.cursor(db=self._store.dbs[b"owners"]) as cursor:
            return [(key.decode(), unpack(raw)) for key, raw in cursor]

    def totals(self) -> dict:
        return self.meta("totals", None) or {"states": {}, "live": 0, "bytes": 0, "files": 0, "users": {}}

    def publish_queue(self) -> list[tuple[str, float]]:
        """(job id, next attempt time) of every job with publishing pending."""
        if b"publish" not in self._store.dbs:
            return []
        with self.txn.cursor(db=self._store.dbs[b"publish"]) as cursor:
            return [(key.decode(), unpack(raw)) for key, raw in cursor]

    def receipt(self, job_id: str) -> bytes | None:
        if b"receipts" not in self._store.dbs:
            return None
        return self.txn.get(job_id.encode(), db=self._store.dbs[b"receipts"])

    def pending_ids(self) -> list[str]:
        with self.txn.cursor(db=self._store.dbs[b"pending"]) as cursor:
            return [key.decode() for key in cursor.iternext(keys=True, values=False)]


class Writer(Reader):
    """Read and write access inside one LMDB write transaction."""

    def _put(self, db: bytes, key: bytes, value) -> None:
        self.txn.put(key, pack(value), db=self._store.dbs[db])

    def put_meta(self, name: str, value) -> None:
        self._put(b"meta", name.encode(), value)

    def put_job(self, record: JobRecord) -> None:
        """Store a record; keep its expiry and pending index keys in step."""
        old = self.job(record.id)
        old_expiry = old.expires_at if old else None
        new_expiry = record.expires_at
        if old_expiry != new_expiry:
            if old_expiry is not None:
                self.txn.delete(expiry_key(old_expiry, record.id), db=self._store.dbs[b"expiry"])
            if new_expiry is not None:
                self.txn.put(expiry_key(new_expiry, record.id), b"", db=self._store.dbs[b"expiry"])
        key = record.id.encode()
        pending_db = self._store.dbs[b"pending"]
        if record.pending:
            self.txn.put(key, b"", db=pending_db)
        elif old and old.pending:
            self.txn.delete(key, db=pending_db)
        owners_db = self._store.dbs[b"owners"]
        owner = record.owner if record.state == "running" and not record.pending else None
        if owner:
            self.txn.put(key, pack(owner), db=owners_db)
        elif old and old.owner:
            self.txn.delete(key, db=owners_db)
        publish_db = self._store.dbs[b"publish"]
        publish = record.publish
        if publish and publish.get("status") == "pending":
            self.txn.put(key, pack(float(publish.get("next_at") or 0)), db=publish_db)
        elif old and (old.publish or {}).get("status") == "pending":
            self.txn.delete(key, db=publish_db)
        self._count(old, record)
        self._put(b"jobs", key, record.to_stored())

    def put_receipt(self, job_id: str, data: bytes) -> None:
        self.txn.put(job_id.encode(), bytes(data), db=self._store.dbs[b"receipts"])

    def _count(self, old: JobRecord | None, new: JobRecord) -> None:
        totals = self.totals()
        states = totals["states"]
        users = totals.setdefault("users", {})
        for record, sign in ((old, -1), (new, 1)):
            if record is None:
                continue
            states[record.state] = states.get(record.state, 0) + sign
            if record.where:
                totals["live"] += sign
                totals["bytes"] += sign * record.usage["bytes"]
                totals["files"] += sign * record.usage["files"]
                user = users.setdefault(str(record.uid), [0, 0, 0])
                user[0] += sign
                user[1] += sign * record.usage["bytes"]
                user[2] += sign * record.usage["files"]
        totals["states"] = {k: v for k, v in states.items() if v}
        totals["users"] = {k: v for k, v in users.items() if v[0]}
        self.put_meta("totals", totals)

    def put_manifest(self, job_id: str, path: str, entry: list) -> list | None:
        """Store an entry; return the one it replaced."""
        key = manifest_key(job_id, path)
        db = self._store.dbs[b"manifest"]
        old = self.txn.get(key, db=db)
        self.txn.put(key, _manifest_value(path, entry), db=db)
        return None if old is None else _manifest_item(0, b"", old)[1]

    def delete_manifest(self, job_id: str, path: str) -> list | None:
        key = manifest_key(job_id, path)
        db = self._store.dbs[b"manifest"]
        old = self.txn.get(key, db=db)
        if old is not None:
            self.txn.delete(key, db=db)
        return None if old is None else _manifest_item(0, b"", old)[1]

    def delete_manifest_prefix(self, job_id: str, prefix: str = "") -> list[tuple[str, list]]:
        """Delete every entry of a job under ``prefix`` (a dir path, or all); return them."""
        db = self._store.dbs[b"manifest"]
        removed = []
        if prefix:
            old = self.delete_manifest(job_id, prefix)
            if old is not None:
                removed.append((prefix, old))
        # A range scan of the keys under prefix/ only: unlinking in a big job stays cheap.
        under = prefix + "/" if prefix else ""
        start = _scan_start(job_id, under)
        base = len(job_id) + 1
        with self.txn.cursor(db=db) as cursor:
            if cursor.set_range(start):
                while cursor.key().startswith(start):
                    path, entry = _manifest_item(base, cursor.key(), cursor.value())
                    if under and not path.startswith(under):  # shares only the cut part of the key
                        if not cursor.next():
                            break
                        continue
                    removed.append((path, entry))
                    if not cursor.delete():
                        break
        return removed

    def add_event(self, kind: str, job: str | None = None, **fields) -> dict:
        seq = self.meta("event_seq", 0) + 1
        self.put_meta("event_seq", seq)
        event = {"seq": seq, "t": round(self._store.clock(), 6), "kind": kind}
        if job is not None:
            event["job"] = job
        event.update({k: v for k, v in fields.items() if v is not None})
        db = self._store.dbs[b"events"]
        self.txn.put(_U64.pack(seq), pack(event), db=db)
        if seq > MAX_EVENTS:
            self.txn.delete(_U64.pack(seq - MAX_EVENTS), db=db)
        return event

    def bump_counter(self, name: str, by: int = 1) -> None:
        counters = self.meta("counters", {})
        counters[name] = counters.get(name, 0) + by
        self.put_meta("counters", counters)


class Store:
    """One LMDB environment (docs/spec.md §1: one per process)."""

    def __init__(self, path: str, *, readonly: bool = False, clock=time.time,
                 map_size: int = INITIAL_MAP_SIZE):
        self.path = path
        self.readonly = readonly
        self.clock = clock
        self.write_lock = threading.Lock()
        self._gate = RWLock()
        if not readonly:
            os.makedirs(path, mode=0o700, exist_ok=True)
        try:
            self.env = lmdb.open(
                path, map_size=map_size, max_dbs=len(_DBS) + 2, subdir=True,
                readonly=readonly, lock=not readonly, sync=True, metasync=True,
                max_readers=512, max_spare_txns=64, create=not readonly,
            )
        except lmdb.Error as exc:
            raise StoreError(f"cannot open the store at {path}: {exc}") from None
        # Free slots of readers that died (docs/spec.md §1 trap list); `wsfs doctor` reports how many.
        self.freed_readers = 0 if readonly else self.env.reader_check()
        self.dbs = {}
        with self.env.begin(write=not readonly) as txn:
            for name in _DBS:
                try:
                    # py-lmdb 3: a handle opened inside a read-only transaction does not outlive it
                    # (mdb_get: Invalid argument later); without txn= it opens its own and keeps it.
                    self.dbs[name] = self.env.open_db(name, txn=None if readonly else txn, create=not readonly)
                except lmdb.NotFoundError:
                    if name in _LATER_DBS:  # a store no daemon of this version has opened yet: read as empty
                        continue
                    raise StoreError(f"{path} is not a wsfs store (no {name.decode()} table)") from None
        self._check_schema()

    def _check_schema(self) -> None:
        with self.read() as r:
            version = r.meta("schema")
        if version is None:
            if self.readonly:
                raise StoreError(f"{self.path} is an empty store")
            with self.write() as w:
                w.put_meta("schema", SCHEMA_VERSION)
        elif version in _MIGRATES_FROM and not self.readonly:
            self._migrate(version)
        elif version != SCHEMA_VERSION and not (version in _MIGRATES_FROM and self.readonly):
            raise StoreError(
                f"store {self.path} has schema version {version}; this wsfs knows {SCHEMA_VERSION}"
            )

    def _migrate(self, version: int) -> None:
        """Schema 1 -> 2, in one transaction: manifest paths longer than ``PATH_KEY_BYTES`` get
        the long key form (schema 1 keyed every path as it is, up to LMDB's 511 bytes)."""
        db = self.dbs[b"manifest"]
        with self.write() as w:
            moved = []
            with w.txn.cursor(db=db) as cursor:
                for key, raw in cursor:
                    job, _sep, path = key.partition(b"\0")
                    if len(path) > PATH_KEY_BYTES:
                        moved.append((key, job.decode(), path.decode("utf-8", "surrogateescape"), unpack(raw)))
            for key, job, path, entry in moved:
                w.txn.delete(key, db=db)
                w.put_manifest(job, path, entry)
            totals = w.totals()  # schema 2 keeps live jobs and usage per user too: count them once
            totals["users"] = {}
            for record in w.jobs():
                if record.where:
                    user = totals["users"].setdefault(str(record.uid), [0, 0, 0])
                    user[0] += 1
                    user[1] += record.usage["bytes"]
                    user[2] += record.usage["files"]
            w.put_meta("totals", totals)
            w.put_meta("schema", SCHEMA_VERSION)

    @contextlib.contextmanager
    def read(self) -> Iterator[Reader]:
        with self._gate.shared():
            with self.env.begin(buffers=False) as txn:
                yield Reader(self, txn)

    @contextlib.contextmanager
    def write(self) -> Iterator[Writer]:
        """A write transaction, committed (and synced) when the block ends.

        Unlike ``transact`` it cannot retry after growing the map: use it
        only for small writes (``MapFullError`` grows the map for next time).
        """
        if self.readonly:
            raise StoreError("the store is open read-only")
        try:
            with self.write_lock, self._gate.shared():
                with self.env.begin(write=True) as txn:
                    yield Writer(self, txn)
        except lmdb.MapFullError:
            self._grow()
            raise
        except lmdb.Error as exc:
            raise self._failed(exc) from None

    def transact(self, fn, on_commit=None):
        """Run ``fn(writer)`` in a write transaction and return its result.

        On ``MapFullError`` the map is doubled and ``fn`` runs again, so
        ``fn`` must do nothing but store work.  ``on_commit(result)`` runs
        after the commit while the write lock is still held, so caches
        updated there see commits in their true order.
        """
        if self.readonly:
            raise StoreError("the store is open read-only")
        while True:
            with self.write_lock:
                try:
                    with self._gate.shared():
                        with self.env.begin(write=True) as txn:
                            result = fn(Writer(self, txn))
                except lmdb.MapFullError:
                    pass
                except lmdb.Error as exc:
                    raise self._failed(exc) from None
                else:
                    if on_commit is not None:
                        on_commit(result)
                    return result
            self._grow()

    def _failed(self, exc: lmdb.Error) -> StoreError:
        """A write transaction that LMDB could not commit (it was aborted: nothing of it stored).

        Its filesystem full is the usual cause (ENOSPC: the caller sees "No space left on
        device", and the same write works once space is freed); anything else is EIO.
        """
        try:
            st = os.statvfs(self.path)
            free = (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize
        except OSError:
            free = None
        if "No space" in str(exc) or (free is not None and free < _FULL_BELOW):
            return StoreError(f"the store could not commit: its filesystem is full ({free} bytes free)",
                              errno=errno.ENOSPC)
        return StoreError(f"the store could not commit: {exc}")

    def _grow(self) -> None:
        with self._gate.exclusive():
            size = self.env.info()["map_size"] * 2
            self.env.set_mapsize(size)

    def sync(self) -> None:
        self.env.sync(True)

    def close(self) -> None:
        self.env.close()

    def stale_readers(self) -> int:
        """Reader slots held by dead processes, freed by this call."""
        return self.env.reader_check()
