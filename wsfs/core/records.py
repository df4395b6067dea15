"""Job records: read, cached and changed in one place (the stored format is in ``store.py``).

``Records`` is the record service every other one uses: ``get``/``require`` read a record
(from a bounded cache), ``update`` changes one by read-modify-write inside one store
transaction, ``commit`` runs any store transaction that returns the records it changed, and
``lock`` gives a job's ``RWLock``.  ``mutation`` holds that lock shared while a job's files
change and refuses a sealed job: the lifecycle's transitions hold it exclusive.

Threading: any thread.  The cache is updated in the store's commit hook, under the store's
write lock, so it never goes back in time; a reader that misses the cache fills it under the
same lock.  A record given out is never changed in place: ``update`` changes a fresh copy.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator

from .errors import NoSuchJobError, SealedError
from .model import JobRecord
from .store import RWLock, Store, Writer

CACHE_SIZE = 8192
# The locks of the jobs used last stay made: a lock nobody holds would otherwise be dropped and
# made anew at the next request of its job (a Condition and a Lock for each create, each flush).
RECENT_LOCKS = 1024


def is_sealed(record: JobRecord) -> bool:
    """Is the workspace read-only: sealed, or a transition in flight?"""
    return bool(record.sealed or record.pending)


def location(record: JobRecord) -> tuple[str, str] | None:
    """Where the job's tree is in the data dir: (root, rel), or None when it has none."""
    return (record.where, record.id) if record.where else None


class Records:
    """The job records of one store: the cache, the per-job locks, and every change."""

    def __init__(self, store: Store, changed: Callable[[list[JobRecord]], None]):
        self.store = store
        # Called with the records every commit changed, after the commit (the FUSE layer drops
        # what the kernel cached of their .state, .job and .manifest).
        self._changed = changed
        self._cache: collections.OrderedDict[str, JobRecord] = collections.OrderedDict()
        self._cache_lock = threading.Lock()
        # One lock per job while anyone holds it (weak), the recently used ones kept (strong).
        self._locks: weakref.WeakValueDictionary[str, RWLock] = weakref.WeakValueDictionary()
        self._recent_locks: collections.OrderedDict[str, RWLock] = collections.OrderedDict()
        self._locks_guard = threading.Lock()

    def _remember(self, records: list[JobRecord]) -> None:
        with self._cache_lock:
            for record in records:
                self._cache[record.id] = record
                self._cache.move_to_end(record.id)
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        if records:
            self._changed(records)

    def commit(self, fn: Callable[[Writer], list[JobRecord]]) -> list[JobRecord]:
        """Run ``fn(writer)`` -> the records it changed, in one transaction."""
        return self.store.transact(fn, on_commit=self._remember)

    def update(self, job_id: str, change: Callable[[JobRecord, Writer], object],
               event: tuple[str, dict] | None = None) -> JobRecord:
        """Read-modify-write one record: ``change(record, writer)`` edits it in place; ``event``
        (kind, fields) is stored in the same commit."""
        def fn(w: Writer) -> list[JobRecord]:
            record = w.job(job_id)
            if record is None:
                raise NoSuchJobError(f"no job {job_id}")
            change(record, w)
            w.put_job(record)
            if event:
                w.add_event(event[0], job_id, **event[1])
            return [record]
        return self.commit(fn)[0]

    def add_event(self, kind: str, job_id: str | None, **fields) -> None:
        """Store one event alone (its own commit)."""
        def fn(w: Writer) -> list[JobRecord]:
            w.add_event(kind, job_id, **fields)
            return []
        self.commit(fn)

    def get(self, job_id: str) -> JobRecord | None:
        with self._cache_lock:
            record = self._cache.get(job_id)
        if record is not None:
            return record
        with self.store.read() as r:
            record = r.job(job_id)
        if record is not None:
            with self.store.write_lock:  # do not race a commit's cache update
                with self._cache_lock:
                    self._cache.setdefault(job_id, record)
        return record

    def require(self, job_id: str) -> JobRecord:
        record = self.get(job_id)
        if record is None:
            raise NoSuchJobError(f"no job {job_id}")
        return record

    def lock(self, job_id: str) -> RWLock:
        with self._locks_guard:
            lock = self._recent_locks.get(job_id)
            if lock is not None:
                self._recent_locks.move_to_end(job_id)
                return lock
            lock = self._locks.get(job_id)
            if lock is None:
                lock = self._locks[job_id] = RWLock()
            self._recent_locks[job_id] = lock
            if len(self._recent_locks) > RECENT_LOCKS:
                self._recent_locks.popitem(last=False)
            return lock

    @contextlib.contextmanager
    def mutation(self, job_id: str) -> Iterator[JobRecord]:
        """Hold while changing a job's files: refuses sealed jobs, blocks transitions."""
        with self.lock(job_id).shared():
            record = self.require(job_id)
            if is_sealed(record) or record.where != "jobs":
                raise SealedError(f"job {job_id} is {record.state}: its workspace is read-only")
            yield record

    def counts(self) -> dict[str, int]:
        """Jobs per state."""
        with self.store.read() as r:
            return dict(r.totals()["states"])
