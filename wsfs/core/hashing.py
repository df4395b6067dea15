"""sha256 of files written front to back, computed behind the writer (docs/spec.md §6).

A ``StreamHash`` follows one open file: each ``write`` at the end of what was
written so far moves ``written``; any other write (a gap, an overwrite, a
truncate, a second writer) makes it invalid, and the receipt step then reads
the file once at the end instead.

Small writes to a stream that is caught up are hashed on the spot from the
bytes in hand.  Bigger ones are left to the ``wsfs-hasher`` thread (nice 10),
which reads them back from the page cache (``pread`` on the hash's own
read-only reopening of the file) and feeds ``hashlib``; both release the GIL.
So a ``write()`` never waits for sha256 (about 400 MB/s on a CPU without SHA
extensions, slower than the disk here), and memory stays bounded: nothing
is buffered.  A file closed before its hash is done is handed over whole
(``finish_later``): its manifest entry gets the sha256 when the thread is done,
and no FUSE thread waits for it.

Threading: ``advance``/``invalidate`` come from FUSE threads under the
handle's lock; the hasher thread takes ``StreamHash.lock`` while it reads and
updates, so each byte is hashed once, in order.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable

log = logging.getLogger("wsfs.hashing")

CHUNK = 1 << 20


INLINE_MAX = 64 << 10  # a write this small is hashed on the spot: cheaper than a re-read


class StreamHash:
    __slots__ = ("writer_fd", "ino", "fd", "digest_state", "hashed", "written", "valid", "lock")

    def __init__(self, writer_fd: int, ino: int = 0):
        self.writer_fd = writer_fd  # the handle's own fd: not ours to close
        self.ino = ino
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

    @classmethod
    def of_closing_file(cls, writer_fd: int, ino: int, size: int) -> StreamHash:
        """A stream over a file's first ``size`` bytes, none hashed yet, read through a fd of its
        own (``writer_fd`` is about to close); invalid when that cannot be opened."""
        stream = cls(writer_fd, ino)
        stream.written = size
        stream._open_reader()
        return stream

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


def small_file_digest(writer_fd: int, size: int) -> bytes | None:
    """sha256 of a file of at most ``INLINE_MAX`` bytes, read now (``StreamHash.of_closing_file``);
    None when it could not be read whole.  For ``release``: a small file costs less hashed
    there than handed to the thread."""
    stream = StreamHash.of_closing_file(writer_fd, 0, size)
    with stream.lock:
        try:
            stream._catch_up()
        except OSError:
            stream.valid = False
        digest = stream.digest_state.digest() if stream.valid else None
        stream._close()
    return digest


class Hasher:
    """The ``wsfs-hasher`` thread: catches every live ``StreamHash`` up in turn."""

    def __init__(self):
        self._live: set[StreamHash] = set()
        self._finishing: dict[StreamHash, Callable[[bytes | None], None]] = {}  # stream -> callback(digest or None)
        self._lock = threading.Lock()
        self._wake = threading.Event()

    def finish_later(self, stream: StreamHash, size: int, done) -> None:
        """Finish ``stream`` in this thread, then call ``done(digest or None)`` from it.

        For ``release``: the file is closed, but hashing the part not yet hashed
        must not hold a FUSE thread (or the CPU it needs) meanwhile.
        """
        with self._lock:
            self._live.discard(stream)
            if stream.valid and stream.written == size:
                self._finishing[stream] = done
                self._wake.set()
                return
        stream.close()
        done(None)

    def hash_whole_later(self, writer_fd: int, ino: int, size: int, done) -> None:
        """A file closed after writes no stream could follow (a gap, an overwrite, a truncate,
        fallocate, an append to an existing file): hash it whole in this thread, from a reading
        fd opened now (``writer_fd`` is about to close), then ``done(digest or None)``.  So
        ending the job finds the sha256 in the manifest instead of re-reading the file."""
        stream = StreamHash.of_closing_file(writer_fd, ino, size)
        if not stream.valid:
            done(None)
            return
        self.finish_later(stream, size, done)

    def backlog(self) -> int:
        """Files closed whose sha256 is still being computed."""
        with self._lock:
            return len(self._finishing)

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
            self._finish_some()
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
        with self._lock:
            abandoned, self._finishing = list(self._finishing), {}
        for stream in abandoned:  # stopping: the receipt step hashes these files if it needs them
            stream.close()

    def digest_now(self, ino: int, size: int) -> bytes | None:
        """The sha256 of a closed file still being hashed here, finished now by the caller.

        The receipt step asks this before reading a file itself: what the thread
        already hashed is not hashed twice.  None when no such stream is pending.
        """
        with self._lock:
            stream = next((s for s in self._finishing if s.ino == ino), None)
        if stream is None:
            return None
        with stream.lock:
            if not stream.valid or stream.written != size or stream.fd < 0:
                return None
            try:
                stream._catch_up()
            except OSError:
                return None
            return stream.digest_state.copy().digest() if stream.valid and stream.hashed == size else None

    def _finish_some(self) -> None:
        """Advance the closed files' hashes a little; report each one that is done."""
        with self._lock:
            work = list(self._finishing.items())
        for stream, done in work:
            with stream.lock:
                try:
                    stream._catch_up(limit=8 * CHUNK)
                except OSError as exc:
                    log.debug("stream hash gave up: %s", exc)
                    stream.valid = False
                if stream.valid and stream.hashed < stream.written:
                    self._wake.set()
                    continue
                digest = stream.digest_state.digest() if stream.valid else None
                stream._close()
            with self._lock:
                self._finishing.pop(stream, None)
            try:
                done(digest)
            except Exception:
                log.exception("recording a finished hash failed")
