"""sha256 of files written front to back, computed behind the writer (SPEC §6).

A ``StreamHash`` follows one open file: each ``write`` at the end of what was
written so far moves ``written``; any other write (a gap, an overwrite, a
truncate, a second writer) makes it invalid, and the receipt step then reads
the file once at the end instead.

The hashing itself runs in the ``wsfs-hasher`` thread, which reads the
written bytes back from the page cache (``pread`` on the hash's own
read-only reopening of the file) and feeds ``hashlib``; both release the GIL.  So a ``write()``
never waits for sha256 (about 400 MB/s on a CPU without SHA extensions,
slower than the disk here), and memory stays bounded: nothing is buffered.
``finish`` (at ``release``) hashes whatever the thread has not reached yet.

Threading: ``advance``/``invalidate`` come from FUSE threads under the
handle's lock; the hasher thread and ``finish`` take ``StreamHash.lock``
while they read and update, so each byte is hashed once, in order.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading

log = logging.getLogger("wsfs.hashing")

CHUNK = 1 << 20


INLINE_MAX = 64 << 10  # a write this small is hashed on the spot: cheaper than a re-read


class StreamHash:
    __slots__ = ("writer_fd", "fd", "digest_state", "hashed", "written", "valid", "lock")

    def __init__(self, writer_fd: int):
        self.writer_fd = writer_fd  # the handle's own fd: not ours to close
        self.fd = -1                # our reading fd, opened when the hasher thread first needs it
        self.digest_state = hashlib.sha256()
        self.hashed = 0
        self.written = 0
        self.valid = True
        self.lock = threading.Lock()

    def advance(self, offset: int, data: bytes, length: int) -> bool:
        """Note a write of ``data[:length]`` at ``offset``.

        Returns True when bytes were left for the hasher thread; a write that
        does not continue the stream makes it invalid from now on.  Small
        writes to a stream that is caught up are hashed here, from ``data``:
        small files never need the thread, an extra fd or a re-read.
        """
        if not self.valid:
            return False
        if offset != self.written:
            self.valid = False
            return False
        if length <= INLINE_MAX and self.hashed == self.written and self.lock.acquire(blocking=False):
            try:
                if self.hashed == self.written:
                    self.digest_state.update(data[:length] if length < len(data) else data)
                    self.hashed += length
                    self.written += length
                    return False
            finally:
                self.lock.release()
        self.written += length
        if self.fd < 0:
            self._open_reader()
        return self.valid

    def _open_reader(self) -> None:
        # A reading fd of its own: the writer's may be O_WRONLY.  /proc/self/fd
        # reopens exactly that inode, whatever happens to its name meanwhile.
        try:
            self.fd = os.open(f"/proc/self/fd/{self.writer_fd}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.valid = False

    def invalidate(self) -> None:
        self.valid = False

    def _catch_up(self, limit: int | None = None) -> None:
        """Hash up to ``written`` (at most ``limit`` bytes this call); caller holds ``lock``."""
        budget = limit
        while self.valid and self.hashed < self.written and (budget is None or budget > 0):
            size = min(CHUNK, self.written - self.hashed)
            chunk = os.pread(self.fd, size, self.hashed)
            if len(chunk) != size:
                self.valid = False  # the file shrank under us: no stream hash
                return
            self.digest_state.update(chunk)
            self.hashed += size
            if budget is not None:
                budget -= size

    def finish(self, size: int) -> bytes | None:
        """The digest if the whole file, ``size`` bytes, was written front to back."""
        with self.lock:
            try:
                if self.valid and self.written == size:
                    self._catch_up()
                    if self.valid and self.hashed == size:
                        return self.digest_state.digest()
                return None
            finally:
                self._close()

    def digest_so_far(self, size: int) -> bytes | None:
        """The digest if the hasher already covered all ``size`` bytes; never waits for it.

        The stream stays open: a later write may still continue it.
        """
        with self.lock:
            if self.valid and self.written == size and self.hashed == size:
                return self.digest_state.copy().digest()
            return None

    @property
    def pending(self) -> bool:
        """Valid, but not yet hashed as far as written: ``finish`` would still have work."""
        return self.valid and self.hashed < self.written

    def close(self) -> None:
        with self.lock:
            self._close()

    def _close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.valid = False


class Hasher:
    """The ``wsfs-hasher`` thread: catches every live ``StreamHash`` up in turn."""

    def __init__(self):
        self._live: set[StreamHash] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()

    def track(self, stream: StreamHash) -> None:
        with self._lock:
            self._live.add(stream)

    def forget(self, stream: StreamHash) -> None:
        with self._lock:
            self._live.discard(stream)

    def poke(self) -> None:
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        # Background work: at nice 10 it yields the CPU to FUSE requests (on Linux the
        # nice value of PRIO_PROCESS + a thread id is that thread's own).
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        except OSError:
            pass
        while not stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            with self._lock:
                streams = [s for s in self._live if s.valid and s.hashed < s.written]
            for stream in streams:
                # Non-blocking: a stream being finished by release needs no help.
                if stream.lock.acquire(blocking=False):
                    try:
                        if stream.fd >= 0:
                            stream._catch_up(limit=8 * CHUNK)
                    except OSError as exc:
                        log.debug("stream hash gave up: %s", exc)
                        stream.valid = False
                    finally:
                        stream.lock.release()
                    if stream.valid and stream.hashed < stream.written:
                        self._wake.set()
