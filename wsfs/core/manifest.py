"""A job's manifest: its bytes as ``.manifest`` shows them, and the writer that keeps it.

``ManifestWriter`` batches the FUSE threads' changes (a file closed after writing, a removal,
a rename) into one store transaction per batch, moving each record's usage with them
(``usage.add_area_usage``); the ``wsfs-manifest`` thread applies the queue, and anyone who
needs the manifest current flushes it.  The stored format is ``store.py``'s.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import typing

from .errors import StoreError
from .model import JobRecord
from .usage import add_area_usage

if typing.TYPE_CHECKING:
    from .lifecycle import JobService

log = logging.getLogger("wsfs.lifecycle")


def manifest_line(path: str, entry: list) -> dict:
    size, mtime_ns, _ino, sha = entry
    return {"path": path, "area": path.split("/", 1)[0], "size": size, "mtime_ns": mtime_ns,
            "sha256": sha.hex() if sha else None}


def manifest_bytes(entries) -> bytes:
    """The exact bytes of ``.manifest``: one sorted JSON line per file."""
    return b"".join(json.dumps(manifest_line(p, e), sort_keys=True).encode() + b"\n" for p, e in entries)


class ManifestWriter:
    """Batches manifest changes into one store transaction per batch.

    FUSE threads queue changes (``put``, ``delete``, ``rename``); the
    ``wsfs-manifest`` thread, or anyone who needs the manifest current
    (``flush``), applies the queue in order in one transaction, adjusting
    each job's ``usage``.  A crash loses at most the queue; recovery
    rebuilds the manifests of jobs that were running (``rebuild``).
    """

    def __init__(self, service: JobService):
        self._service = service
        self._ops: list[tuple] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()

    def put(self, job: str, path: str, st: os.stat_result, sha: bytes | None = None, *, refresh: bool = False) -> None:
        """The file at ``path`` is now ``st``; with more than one link, so are the job's other
        entries of its inode (one file, several names: each is an entry, each counts).
        ``refresh``: only if ``path``'s entry is this inode's when the batch is applied (a file
        recorded again at its release may have been renamed meanwhile: its entry moved)."""
        self._queue(("put", job, path, [st.st_size, st.st_mtime_ns, st.st_ino, sha], st.st_nlink > 1, refresh))

    def delete(self, job: str, path: str) -> None:
        self._queue(("delete", job, path))

    def drop(self, job: str, area: str) -> None:
        """Delete an area's entries whose usage the record no longer counts."""
        self._queue(("drop", job, area))

    def rename(self, job: str, src: str, dst: str) -> None:
        if src != dst:  # rename(2) of a name onto itself changes nothing (a batch would drop the entry)
            self._queue(("rename", job, src, dst))

    def hashed(self, job: str, path: str, st: os.stat_result, sha: bytes) -> None:
        """A file's sha256, computed after its close: stored in its entry if the entry is still
        that file as ``st`` saw it when the batch is applied.  (Checked then, in the queue's
        order, not by the hasher: an unlink or rename queued meanwhile must win.)"""
        self._queue(("hashed", job, path, st.st_size, st.st_mtime_ns, st.st_ino, sha))

    def retime(self, job: str, path: str, st: os.stat_result) -> None:
        """A new mtime (utimens) on an unchanged file: the entry and its sha256 stay valid."""
        self._queue(("retime", job, path, st.st_size, st.st_mtime_ns, st.st_ino))

    def _queue(self, op: tuple) -> None:
        with self._lock:
            self._ops.append(op)
            if len(self._ops) == 1:
                self._wake.set()

    def flush(self) -> None:
        with self._flush_lock:
            with self._lock:
                ops, self._ops = self._ops, []
                self._wake.clear()
            if ops:
                try:
                    self._service.records.commit(lambda w: self._apply(w, ops))
                except BaseException:
                    with self._lock:  # nothing of the batch was stored: it goes first next time
                        self._ops[:0] = ops
                    raise

    @staticmethod
    def _apply(w, ops) -> list[JobRecord]:
        # job -> area -> [bytes, files]: usage is kept per area too, so that dropping a
        # scratch area at completion is one subtraction, not a walk of its entries.
        deltas: dict[str, dict[str, list[int]]] = collections.defaultdict(
            lambda: collections.defaultdict(lambda: [0, 0]))

        def account(job, path, old, new):
            d = deltas[job][path.split("/", 1)[0]]
            if old is not None:
                d[0] -= old[0]
                d[1] -= 1
            if new is not None:
                d[0] += new[0]
                d[1] += 1

        for op in ops:
            kind, job = op[0], op[1]
            if kind == "put":
                if op[5]:  # refresh: only the entry this file has there now (a rename may have moved it)
                    there = w.manifest_entry(job, op[2])
                    if there is None or there[2] != op[3][2]:
                        continue
                account(job, op[2], w.put_manifest(job, op[2], op[3]), op[3])
                if op[4]:  # a multiply-linked file: its other names in the job changed with it
                    for path, old in list(w.manifest(job)):
                        if old[2] == op[3][2] and path != op[2] and old[:2] != op[3][:2]:
                            account(job, path, w.put_manifest(job, path, list(op[3])), op[3])
            elif kind == "delete":
                for path, old in w.delete_manifest_prefix(job, op[2]):
                    account(job, path, old, None)
            elif kind == "drop":  # entries whose usage the caller already took off the record
                w.delete_manifest_prefix(job, op[2])
            elif kind == "hashed":
                entry = w.manifest_entry(job, op[2])
                if entry is not None and entry[:3] == [op[3], op[4], op[5]]:
                    entry[3] = op[6]
                    w.put_manifest(job, op[2], entry)
            elif kind == "retime":
                entry = w.manifest_entry(job, op[2])
                if entry is not None and entry[0] == op[3] and entry[2] == op[5]:
                    entry[1] = op[4]
                    w.put_manifest(job, op[2], entry)
            else:  # rename: what is at dst goes, what is under src moves
                src, dst = op[2], op[3]
                for path, old in w.delete_manifest_prefix(job, dst):
                    account(job, path, old, None)
                for path, entry in w.delete_manifest_prefix(job, src):
                    account(job, path, entry, None)  # a move, not a new file: it leaves src ...
                    new_path = dst + path[len(src):]
                    account(job, new_path, w.put_manifest(job, new_path, entry), entry)  # ... and lands at dst
        records = []
        for job, areas in deltas.items():
            record = w.job(job)
            if record is None or not any(b or f for b, f in areas.values()):
                continue
            add_area_usage(record, areas)
            w.put_job(record)
            records.append(record)
        return records

    def run(self, stop: threading.Event, interval: float = 0.05) -> None:
        failing = False
        while not stop.is_set():
            self._wake.wait(1.0)
            if stop.wait(interval):  # let a burst of changes gather into one commit
                break
            try:
                self.flush()
            except StoreError as exc:
                # A full disk is no reason to stop the mount: the changes stay queued and are
                # stored once a commit works again (the callers that flush get the errno).
                if not failing:
                    log.warning("manifest changes wait: %s; retrying every second", exc)
                failing = True
                stop.wait(1.0)
                continue
            if failing:
                log.warning("manifest changes stored again")
                failing = False
        self.flush()
