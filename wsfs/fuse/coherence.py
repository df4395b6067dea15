"""Keeping the kernel's caches true to the tree: the work-arounds that libfuse's high-level,
path-based API needs (docs/architecture.md).

- ``LinkedNames``: the names the kernel holds of each multiply-linked file, so that a change
  under one name drops what it cached under the others (one kernel inode per *name* here).
- ``HiddenNames``: libfuse's ``.fuse_hidden*`` names of files unlinked while open, removed at
  the file's last close whatever the order of RELEASE, UNLINK and RENAME.
- ``PageInvalidator``: invalidations that drop pages, run on their own thread so that a
  handler never waits for the page lock its own write holds.

Each is used by ``operations.WsfsOperations`` only; each has its own lock, a leaf lock.
"""

from __future__ import annotations

import logging
import queue
import threading

from .binding import invalidate_path

log = logging.getLogger("wsfs.fs")


class LinkedNames:
    """The names the kernel looked up of each multiply-linked file in a job, by (root, inode).

    The high-level libfuse API gives every *name* its own node id, so the kernel keeps
    attributes and pages per name, not per file: after ``ln a b; echo x >> a``, ``stat b``
    and ``cat b`` would show b's cached size (the old one) until attr_timeout.  So every
    change to such a file makes the kernel drop what it holds under the file's other names
    (``invalidate_path``).  Every name the kernel holds was looked up through ``getattr``,
    which notes it here when the file has more than one link.

    Threading: any FUSE thread; ``_lock`` guards the table (a leaf lock).
    """

    MAX_FILES = 1 << 16  # beyond it the table starts again: stale caches until attr_timeout, no unbounded memory

    def __init__(self):
        self._names: dict[tuple[str, int], set[str]] = {}
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._names)

    def __contains__(self, key) -> bool:
        return key in self._names

    def note(self, key: tuple[str, int], path: str) -> None:
        with self._lock:
            if key not in self._names and len(self._names) >= self.MAX_FILES:
                self._names.clear()
            self._names.setdefault(key, set()).add(path)

    def forget(self, key: tuple[str, int], path: str) -> None:
        with self._lock:
            names = self._names.get(key)
            if names is not None:
                names.discard(path)
                if not names:
                    del self._names[key]

    def others(self, key: tuple[str, int], path: str) -> list[str]:
        with self._lock:
            return [p for p in self._names.get(key, ()) if p != path]

    def moved(self, old: str, new: str, exchange: bool = False) -> None:
        """A rename: names at or below ``old`` are now below ``new`` (and the other way round)."""
        def swap(p):
            for a, b in ((old, new), (new, old)) if exchange else ((old, new),):
                if p == a or p.startswith(a + "/"):
                    return b + p[len(a):]
            return p
        with self._lock:
            for names in self._names.values():
                if any(p == old or p.startswith(old + "/") or (exchange and (p == new or p.startswith(new + "/")))
                       for p in names):
                    renamed = {swap(p) for p in names}
                    names.clear()
                    names.update(renamed)


class HiddenNames:
    """libfuse's names of files unlinked while open, each removed at its file's last close.

    With ``hard_remove`` off, libfuse renames a file unlinked (or renamed over) while open to
    ``.fuse_hiddenXXX`` and removes that name at its last RELEASE.  On libfuse 3.14 a RELEASE
    that races the UNLINK leaves the name behind for good (libfuse #746, fixed upstream by
    #782): bytes nobody can see, counted against the job's quota.  So wsfs does not rely on
    libfuse for it.  It counts its own open backing handles per (root, inode), and keeps the
    hidden names per (root, inode).  A hidden name is removed when its inode's count reaches
    zero, by whichever step comes last, the rename that hid it or the release of the last
    handle; both steps decide under one lock.  libfuse's own later unlink of the name then
    finds nothing, which it ignores.  The names kept are also what ``stat`` takes off a
    file's link count (POSIX: an unlinked open file has no link).

    Threading: any FUSE thread; ``_lock`` is a leaf lock.
    """

    def __init__(self):
        self._open: dict[tuple[str, int], int] = {}
        self._names: dict[tuple[str, int], set[str]] = {}
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._names)

    def links(self, key: tuple[str, int]) -> int:
        """How many of a file's links are hidden names (fstat and stat must not count them)."""
        return len(self._names.get(key, ()))

    def opened(self, key: tuple[str, int]) -> None:
        with self._lock:
            self._open[key] = self._open.get(key, 0) + 1

    def closed(self, key: tuple[str, int]) -> list[str]:
        """One handle less; the hidden names to remove now (its last handle closed)."""
        with self._lock:
            count = self._open.get(key, 0) - 1
            if count > 0:
                self._open[key] = count
                return []
            self._open.pop(key, None)
            return sorted(self._names.pop(key, ()))

    def hidden(self, key: tuple[str, int], rel: str) -> bool:
        """libfuse hid ``rel``: True when no handle has the file open any more (remove it now)."""
        with self._lock:
            if not self._open.get(key):
                return True
            self._names.setdefault(key, set()).add(rel)
            return False

    def forget(self, rel: str) -> None:
        """The name went another way (libfuse's unlink, a directory's removal)."""
        with self._lock:
            for key in [k for k, names in self._names.items() if rel in names]:
                self._names[key].discard(rel)
                if not self._names[key]:
                    del self._names[key]

    def take_below(self, root: str, rel: str) -> list[str]:
        """Every hidden name at or below ``root``/``rel``, no longer kept (a tree being sealed or leaving)."""
        taken: list[str] = []
        with self._lock:
            for key in list(self._names):
                if key[0] != root:
                    continue
                mine = {n for n in self._names[key] if n.startswith(rel + "/")}
                if mine:
                    taken += mine
                    self._names[key] -= mine
                    if not self._names[key]:
                        del self._names[key]
        return sorted(taken)

    def moved(self, root: str, old: str, new: str, exchange: bool = False) -> None:
        """A rename of a directory: the hidden names below it moved with it."""
        if not self._names:
            return

        def swap(p):
            for a, b in ((old, new), (new, old)) if exchange else ((old, new),):
                if p.startswith(a + "/"):
                    return b + p[len(a):]
            return p
        with self._lock:
            for key, names in self._names.items():
                if key[0] == root:
                    renamed = {swap(p) for p in names}
                    names.clear()
                    names.update(renamed)


class PageInvalidator:
    """``invalidate_path`` (attributes *and* pages) run by the ``wsfs-invalidate`` thread.

    Dropping a file's pages waits for their locks, and a write in flight holds the locks of
    the pages it writes until its reply: a handler that invalidated its own file, under any
    of its names libfuse maps to the same kernel inode, would wait for itself forever (seen:
    pwrite hung in request_wait_answer, the daemon in __folio_lock under
    fuse_reverse_inval_inode).  So the caller waits at most ``WAIT``: every other invalidation
    is done before the reply, that one completes right after it.

    Threading: any FUSE thread calls; one thread, started on first use, works the queue.
    """

    WAIT = 0.25

    def __init__(self):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def __call__(self, paths: list[str]) -> None:
        if not paths:
            return
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="wsfs-invalidate", daemon=True)
                self._thread.start()
        done = threading.Event()
        self._queue.put((paths, done))
        done.wait(self.WAIT)

    def _run(self) -> None:
        while True:
            paths, done = self._queue.get()
            for path in paths:
                try:
                    invalidate_path(path)
                except Exception:
                    log.exception("could not invalidate the kernel's cache of %s", path)
            done.set()
