"""Random operations, fsx style: wsfs against a plain directory, step by step (docs/spec.md §3, §6, §8).

A seeded random sequence of open/close, read/write (at an offset, at the
file position, ``O_APPEND``), truncate (path and fd, grow and shrink),
fallocate (allocate, keep size, punch hole), mmap write + flush and mmap
read, rename (also over an existing name and into a subdirectory, and
renameat2 with RENAME_EXCHANGE and RENAME_NOREPLACE), link,
unlink (also of open files), fsync, chmod and utime is applied to files in
a job's ``output/`` through wsfs and to the same names in a plain
directory.  After every step the two must agree: the result or errno of
the call, the names in each directory, ``st_size``/``st_mode``/``st_nlink``
of every name and open fd, the full content of every file the step
touched, and ``st_mtime`` where it is well defined (set by ``utime`` and
not written since); every ``FULL_COMPARE_EVERY`` steps also the content of
every file and open fd, and the paths ``.manifest`` lists.

The run is cut in segments, one job each: at a segment's end every fd is
closed, the job is completed, and its receipt must list exactly the
model's files with their sha256 (the hashes computed while writing, or
on completion, must be right whatever the sequence) and ``.manifest``
their sizes.

``WSFS_STRESS=full``: 100,000 operations; default 3,000.  ``WSFS_SEED``
replays a run; a failure names the step and the operations before it.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import json
import mmap
import os
import random

import pytest
from stress_support import FULL, replay, seed, sha256, size, start_mount, write_state

OPERATIONS = size(3_000, 100_000)
SEGMENT = 1_000                      # operations per job
MAX_SIZE = 192 * 1024                # fsx's default file length is 256K; this keeps reads cheap
FULL_COMPARE_EVERY = 50
MAX_OPEN = 6
NAMES = ("f0", "f1", "f2", "f3", "sub/g0", "sub/g1")
DIRS = ("", "sub")
OPEN_FLAGS = (
    os.O_RDONLY, os.O_WRONLY, os.O_RDWR, os.O_RDWR | os.O_APPEND, os.O_WRONLY | os.O_APPEND,
    os.O_RDWR | os.O_CREAT, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, os.O_RDWR | os.O_CREAT | os.O_EXCL,
    os.O_RDWR | os.O_TRUNC, os.O_RDWR | os.O_CREAT | os.O_APPEND,
)
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
WEIGHTS = {
    "open": 10, "close": 6, "pwrite": 14, "write": 10, "lseek": 3, "pread": 8, "read": 4, "ftruncate": 4,
    "truncate": 4, "fallocate": 3, "falloc_keep": 1, "punch": 2, "mmap_write": 4, "mmap_read": 2,
    "rename": 4, "rename2": 2, "link": 3, "unlink": 3, "fsync": 2, "chmod": 1, "utime": 2, "create_write_close": 4,
}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


def renameat2(src: str, dst: str, flags: int) -> None:
    if _libc.renameat2(-100, src.encode(), -100, dst.encode(), flags) != 0:  # AT_FDCWD
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    if _libc.fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class Divergence(AssertionError):
    pass


class Fsx:
    """One segment: the same operations on ``sides[0]`` (wsfs) and ``sides[1]`` (the model)."""

    def __init__(self, rng: random.Random, wsfs_dir: str, model_dir: str, label: str):
        self.rng = rng
        self.sides = (wsfs_dir, model_dir)
        self.label = label
        self.fds: list[tuple[int, int, int]] = []     # (wsfs fd, model fd, flags)
        self.mtimes: dict[int, int] = {}               # model inode -> mtime set by utime, not written since
        self.history: collections.deque = collections.deque(maxlen=80)
        self.steps = 0
        for side in self.sides:
            os.makedirs(os.path.join(side, "sub"), exist_ok=True)

    # -- running both sides ---------------------------------------------------------

    def both(self, fn):
        """``fn(side_index)`` on wsfs and the model; both must return the same or fail the same."""
        results = []
        for i in (0, 1):
            try:
                results.append(("ok", fn(i)))
            except OSError as exc:
                results.append(("errno", errno.errorcode.get(exc.errno, exc.errno)))
        if results[0] != results[1]:
            self.fail(f"results differ: wsfs {_short(results[0])}, model {_short(results[1])}")
        return results[1]

    def path(self, i: int, name: str) -> str:
        return os.path.join(self.sides[i], name)

    def fail(self, message: str):
        raise Divergence(f"{self.label} step {self.steps}: {message}\nlast operations:\n  "
                         + "\n  ".join(self.history))

    def model_names(self) -> list[str]:
        return [n for n in NAMES if os.path.lexists(self.path(1, n))]

    # -- one step -----------------------------------------------------------------------

    def step(self) -> None:
        self.steps += 1
        kind = self.rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]
        touched = getattr(self, f"op_{kind}")()
        self.compare(touched, full=self.steps % FULL_COMPARE_EVERY == 0)

    def _fd(self):
        return self.rng.choice(self.fds) if self.fds else None

    def _data(self) -> bytes:
        n = self.rng.choice((1, 7, 512, 4096, 4097, self.rng.randrange(1, 65536)))
        return self.rng.randbytes(n)

    def _offset(self) -> int:
        return self.rng.choice((0, self.rng.randrange(MAX_SIZE), 4096 * self.rng.randrange(48)))

    def _name(self) -> str:
        return self.rng.choice(NAMES)

    def _size_of(self, fd_model: int) -> int:
        return os.fstat(fd_model).st_size

    def _inode_changed(self, ino: int) -> None:
        self.mtimes.pop(ino, None)

    def _note(self, text: str) -> None:
        self.history.append(f"{self.steps}: {text}")

    def op_open(self):
        if len(self.fds) >= MAX_OPEN:
            return self.op_close()
        name, flags = self._name(), self.rng.choice(OPEN_FLAGS)
        self._note(f"open {name} {flags:#o}")
        existed = os.path.lexists(self.path(1, name))
        fds = []

        def fn(i):
            fd = os.open(self.path(i, name), flags | os.O_CLOEXEC, 0o644)
            fds.append(fd)
            return "fd"
        outcome = self.both(fn)
        if outcome[0] == "ok":
            self.history[-1] += f" -> fd{fds[1]}"
            self.fds.append((fds[0], fds[1], flags))
            if flags & os.O_TRUNC or not existed:  # a new file may get the inode number of a gone one
                self._inode_changed(os.fstat(fds[1]).st_ino)
        return [name]

    def op_close(self):
        entry = self._fd()
        if entry is None:
            return self.op_open()
        self._note(f"close fd{entry[1]}")
        self.fds.remove(entry)
        self.both(lambda i: os.close(entry[i]))
        return []

    def _writable(self, flags: int) -> bool:
        return bool(flags & (os.O_WRONLY | os.O_RDWR))

    def op_pwrite(self):
        entry = self._fd()
        if entry is None:
            return self.op_create_write_close()
        offset, data = self._offset(), self._data()
        self._note(f"pwrite fd{entry[1]} @{offset} +{len(data)} (flags {entry[2]:#o})")
        self._written(entry)
        self.both(lambda i: os.pwrite(entry[i], data, offset))
        return []

    def op_write(self):
        entry = self._fd()
        if entry is None:
            return self.op_create_write_close()
        data = self._data()
        self._note(f"write fd{entry[1]} +{len(data)} at pos {os.lseek(entry[1], 0, os.SEEK_CUR)}")
        self._written(entry)
        self.both(lambda i: os.write(entry[i], data))
        return []

    def _written(self, entry) -> None:
        if self._writable(entry[2]):
            self._inode_changed(os.fstat(entry[1]).st_ino)

    def op_lseek(self):
        entry = self._fd()
        if entry is None:
            return self.op_open()
        whence = self.rng.choice((os.SEEK_SET, os.SEEK_END, os.SEEK_CUR))
        offset = self.rng.randrange(MAX_SIZE) if whence == os.SEEK_SET else 0
        self._note(f"lseek fd{entry[1]} {offset} whence {whence}")
        self.both(lambda i: os.lseek(entry[i], offset, whence))
        return []

    def op_pread(self):
        entry = self._fd()
        if entry is None:
            return self.op_open()
        offset, n = self._offset(), self.rng.choice((1, 4096, self.rng.randrange(1, 70000)))
        self._note(f"pread fd{entry[1]} @{offset} {n}")
        self.both(lambda i: sha256(os.pread(entry[i], n, offset)))
        return []

    def op_read(self):
        entry = self._fd()
        if entry is None:
            return self.op_open()
        n = self.rng.randrange(1, 70000)
        self._note(f"read fd{entry[1]} {n}")
        self.both(lambda i: sha256(os.read(entry[i], n)))
        return []

    def op_ftruncate(self):
        entry = self._fd()
        if entry is None:
            return self.op_truncate()
        length = self._new_length(self._size_of(entry[1]))
        self._note(f"ftruncate fd{entry[1]} {length}")
        self._written(entry)
        self.both(lambda i: os.ftruncate(entry[i], length))
        return []

    def _new_length(self, current: int) -> int:
        return self.rng.choice((0, max(current - self.rng.randrange(1, 9000), 0),
                                min(current + self.rng.randrange(1, 9000), MAX_SIZE),
                                self.rng.randrange(MAX_SIZE)))

    def op_truncate(self):
        name = self._name()
        current = os.lstat(self.path(1, name)).st_size if os.path.lexists(self.path(1, name)) else 0
        length = self._new_length(current)
        self._note(f"truncate {name} {length}")
        if os.path.lexists(self.path(1, name)):
            self._inode_changed(os.lstat(self.path(1, name)).st_ino)
        self.both(lambda i: os.truncate(self.path(i, name), length))
        return [name]

    def op_fallocate(self):
        entry = self._fd()
        if entry is None:
            return self.op_open()
        offset, length = self.rng.randrange(MAX_SIZE - 1), self.rng.randrange(1, 40000)
        length = min(length, MAX_SIZE - offset)
        self._note(f"posix_fallocate fd{entry[1]} @{offset} +{length}")
        self._written(entry)
        self.both(lambda i: os.posix_fallocate(entry[i], offset, length))
        return []

    def op_falloc_keep(self):
        entry = self._fd()
        if entry is None:
            return self.op_open()
        offset, length = self.rng.randrange(MAX_SIZE), self.rng.randrange(1, 40000)
        self._note(f"fallocate KEEP_SIZE fd{entry[1]} @{offset} +{length}")
        self._written(entry)
        self.both(lambda i: fallocate(entry[i], FALLOC_FL_KEEP_SIZE, offset, length))
        return []

    def op_punch(self):
        entry = self._fd()
        if entry is None:
            return self.op_open()
        size_now = self._size_of(entry[1])
        offset = self.rng.randrange(max(size_now, 1))
        length = self.rng.choice((1, 4096, self.rng.randrange(1, 20000)))
        self._note(f"fallocate PUNCH_HOLE fd{entry[1]} @{offset} +{length}")
        self._written(entry)
        self.both(lambda i: fallocate(entry[i], FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length))
        return []

    def op_mmap_write(self):
        name = self._name()
        model = self.path(1, name)
        if not os.path.isfile(model) or os.path.getsize(model) == 0:
            return self.op_create_write_close()
        length = os.path.getsize(model)
        offset = self.rng.randrange(length)
        data = self.rng.randbytes(min(self.rng.randrange(1, 20000), length - offset))
        self._note(f"mmap write {name} @{offset} +{len(data)} (size {length})")
        self._inode_changed(os.lstat(model).st_ino)

        def fn(i):
            fd = os.open(self.path(i, name), os.O_RDWR | os.O_CLOEXEC)
            try:
                if os.fstat(fd).st_size != length:
                    return f"size {os.fstat(fd).st_size}"
                with mmap.mmap(fd, length) as mm:
                    mm[offset:offset + len(data)] = data
                    mm.flush()
            finally:
                os.close(fd)
            return "written"
        self.both(fn)
        return [name]

    def op_mmap_read(self):
        name = self._name()
        model = self.path(1, name)
        if not os.path.isfile(model) or os.path.getsize(model) == 0:
            return self.op_open()
        self._note(f"mmap read {name}")

        def fn(i):
            fd = os.open(self.path(i, name), os.O_RDONLY | os.O_CLOEXEC)
            try:
                length = os.fstat(fd).st_size
                if length == 0:
                    return "empty"
                with mmap.mmap(fd, length, prot=mmap.PROT_READ) as mm:
                    return sha256(mm[:])
            finally:
                os.close(fd)
        self.both(fn)
        return []

    def op_rename(self):
        src, dst = self._name(), self._name()
        self._note(f"rename {src} -> {dst}")
        src_model, dst_model = self.path(1, src), self.path(1, dst)
        moved = self.mtimes.get(os.lstat(src_model).st_ino) if os.path.lexists(src_model) else None
        self.both(lambda i: os.rename(self.path(i, src), self.path(i, dst)))
        if moved is not None:
            self.mtimes[os.lstat(dst_model).st_ino] = moved
        return [src, dst]

    def op_rename2(self):
        """renameat2: RENAME_EXCHANGE (both names swap files) or RENAME_NOREPLACE."""
        src, dst = self._name(), self._name()
        flags = self.rng.choice((RENAME_EXCHANGE, RENAME_NOREPLACE))
        self._note(f"renameat2 {src} -> {dst} {'EXCHANGE' if flags == RENAME_EXCHANGE else 'NOREPLACE'}")
        inodes = {n: os.lstat(self.path(1, n)).st_ino for n in (src, dst) if os.path.lexists(self.path(1, n))}
        self.both(lambda i: renameat2(self.path(i, src), self.path(i, dst), flags))
        for ino in inodes.values():  # mtimes follow inodes, which this moved: keep it simple
            self.mtimes.pop(ino, None)
        return [src, dst]

    def op_link(self):
        src, dst = self._name(), self._name()
        self._note(f"link {src} -> {dst}")
        self.both(lambda i: os.link(self.path(i, src), self.path(i, dst)))
        return [src, dst]

    def op_unlink(self):
        name = self._name()
        self._note(f"unlink {name}")
        self.both(lambda i: os.unlink(self.path(i, name)))
        return [name]

    def op_fsync(self):
        entry = self._fd()
        if entry is None:
            return self.op_open()
        self._note(f"fsync fd{entry[1]}")
        self.both(lambda i: os.fsync(entry[i]))
        return []

    def op_chmod(self):
        name, mode = self._name(), self.rng.choice((0o600, 0o644, 0o640, 0o755, 0o444))
        self._note(f"chmod {name} {mode:o}")
        self.both(lambda i: os.chmod(self.path(i, name), mode))
        return [name]

    def op_utime(self):
        name = self._name()
        mtime = self.rng.randrange(10**18, 17 * 10**17 + 10**18)
        atime = mtime - self.rng.randrange(10**12)
        self._note(f"utime {name} {mtime}")
        self.both(lambda i: os.utime(self.path(i, name), ns=(atime, mtime)))
        if os.path.lexists(self.path(1, name)):
            self.mtimes[os.lstat(self.path(1, name)).st_ino] = mtime
        return [name]

    def op_create_write_close(self):
        """The common case: a file written front to back and closed (its sha256 is streamed)."""
        name = self._name()
        data = self.rng.randbytes(self.rng.randrange(0, MAX_SIZE))
        chunk = self.rng.choice((4096, 65536, 131072))
        self._note(f"create+write+close {name} {len(data)} in {chunk}-byte writes")

        def fn(i):
            fd = os.open(self.path(i, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                for start in range(0, len(data), chunk):
                    os.write(fd, data[start:start + chunk])
            finally:
                os.close(fd)
        self.both(fn)
        self._inode_changed(os.lstat(self.path(1, name)).st_ino)
        return [name]

    # -- comparing ------------------------------------------------------------------------

    def compare(self, touched, full: bool = False) -> None:
        for d in DIRS:
            names = [sorted(os.listdir(os.path.join(side, d))) for side in self.sides]
            if names[0] != names[1]:
                self.fail(f"directory {d or '.'}: wsfs has {names[0]}, the model {names[1]}")
        for name in NAMES:
            model = self.path(1, name)
            if not os.path.lexists(model):
                continue
            st_w, st_m = os.lstat(self.path(0, name)), os.lstat(model)
            self._compare_stat(name, st_w, st_m)
            if name in touched or full:
                self._compare_content(name)
        if full:  # the manifest names every file (its sizes follow at close: docs/spec.md §8)
            with open(os.path.join(os.path.dirname(self.sides[0]), ".manifest")) as f:
                listed = sorted(json.loads(line)["path"] for line in f)
            files = sorted(f"output/{n}" for n in NAMES if os.path.isfile(self.path(1, n)))
            if listed != files:
                self.fail(f".manifest lists {listed}, the files are {files}")
        for fd_w, fd_m, flags in self.fds:
            self._compare_stat(f"fd{fd_m}", os.fstat(fd_w), os.fstat(fd_m), mtime=False)
            if full and flags & os.O_ACCMODE != os.O_WRONLY:
                length = os.fstat(fd_m).st_size
                if sha256(os.pread(fd_w, length + 1, 0)) != sha256(os.pread(fd_m, length + 1, 0)):
                    self.fail(f"content read through open fd{fd_m} differs")

    def _compare_stat(self, what: str, st_w, st_m, mtime: bool = True) -> None:
        for field in ("st_size", "st_mode", "st_nlink"):
            if getattr(st_w, field) != getattr(st_m, field):
                self.fail(f"{what}: {field} is {_fmt(field, getattr(st_w, field))} on wsfs, "
                          f"{_fmt(field, getattr(st_m, field))} in the model")
        if mtime and st_m.st_ino in self.mtimes and st_w.st_mtime_ns != self.mtimes[st_m.st_ino]:
            self.fail(f"{what}: st_mtime is {st_w.st_mtime_ns} on wsfs, {self.mtimes[st_m.st_ino]} set by utime")

    def _compare_content(self, name: str) -> None:
        digests = []
        for i in (0, 1):
            with open(self.path(i, name), "rb") as f:
                digests.append(sha256(f.read()))
        if digests[0] != digests[1]:
            self.fail(f"{name}: content differs")

    def close_all(self) -> None:
        while self.fds:
            entry = self.fds.pop()
            for i in (0, 1):
                os.close(entry[i])
        self.compare(NAMES, full=True)


def _short(result) -> str:
    text = repr(result)
    return text if len(text) < 200 else text[:200] + "..."


def _fmt(field: str, value) -> str:
    return oct(value) if field == "st_mode" else str(value)


def check_completed_segment(job_dir: str, model_dir: str) -> None:
    """The receipt lists exactly the model's files, with sizes and sha256; .manifest agrees."""
    expected = {}
    for name in NAMES:
        path = os.path.join(model_dir, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                data = f.read()
            expected[f"output/{name}"] = (len(data), sha256(data))
    with open(os.path.join(job_dir, "receipt.json")) as f:
        receipt = json.load(f)
    listed = {o["path"]: (o["size"], o["sha256"]) for o in receipt["outputs"]}
    assert listed == expected, f"receipt of {os.path.basename(job_dir)}: {listed} != model {expected}"
    with open(os.path.join(job_dir, ".manifest")) as f:
        manifest = {e["path"]: (e["size"], e["sha256"]) for e in map(json.loads, f)}
    assert manifest == expected, f".manifest of {os.path.basename(job_dir)}: {manifest} != model {expected}"


@pytest.mark.mount
@pytest.mark.slow
def test_random_operations_agree_with_a_plain_directory(tmp_path):
    seed_value = seed()
    print(f"fsx: {OPERATIONS} operations in segments of {SEGMENT} ({'full' if FULL else 'short'} run)")
    m = start_mount(tmp_path)
    done = 0
    counts: collections.Counter = collections.Counter()
    try:
        segment = 0
        while done < OPERATIONS:
            job = f"fsx{segment:04d}"
            os.mkdir(m.ws / job)
            model_dir = tmp_path / "model" / job
            rng = random.Random(seed_value * 100_003 + segment)
            fsx = Fsx(rng, str(m.ws / job / "output"), str(model_dir), f"{job} {replay(seed_value)}")
            for _ in range(min(SEGMENT, OPERATIONS - done)):
                fsx.step()
                counts[fsx.history[-1].split(": ", 1)[1].split()[0]] += 1
            fsx.close_all()
            done += fsx.steps
            write_state(m.ws / job, "completed")
            check_completed_segment(str(m.ws / job), str(model_dir))
            segment += 1
        print(f"fsx: {done} operations in {segment} jobs agreed; by kind: {dict(sorted(counts.items()))}")
        assert m.daemon_errors() == [], "\n".join(m.daemon_errors())
    finally:
        m.stop()


# -- regressions: what this suite found, each pinned by a short test -----------------------------------------


@pytest.mark.mount
def test_fstat_of_an_unlinked_open_file_counts_no_link_after_ftruncate(wsfs_mount):
    """libfuse keeps an unlinked open file under a hidden name; its setattr reply counted that name."""
    out = wsfs_mount.ws / "j"
    os.mkdir(out)
    fd = os.open(out / "output" / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.unlink(out / "output" / "f")
        assert os.fstat(fd).st_nlink == 0
        os.ftruncate(fd, 5000)
        assert (os.fstat(fd).st_nlink, os.fstat(fd).st_size) == (0, 5000)
        os.fchmod(fd, 0o600)
        assert os.fstat(fd).st_nlink == 0
    finally:
        os.close(fd)
    assert os.listdir(out / "output") == []


@pytest.mark.mount
@pytest.mark.parametrize("area", ["workspaces/j/output", "shared/s"])
def test_a_change_through_one_hard_link_shows_through_the_other_at_once(wsfs_mount, area):
    """Each name is its own kernel inode under libfuse's high-level API: b's size was cached for a second."""
    from conftest import sh

    os.mkdir(wsfs_mount.ws / "j")
    os.makedirs(wsfs_mount.mnt / area, exist_ok=True)
    result = sh("echo one > a && ln a b && stat -c %h a && stat -c %s b && echo two >> a && cat b "
                "&& truncate -s 2 a && stat -c %s b && chmod 600 a && stat -c %a b && rm b && stat -c %h a",
                cwd=wsfs_mount.mnt / area)
    assert result.stdout.split("\n") == ["2", "4", "one", "two", "2", "600", "1", ""]


@pytest.mark.mount
def test_an_open_file_unlinked_under_one_name_keeps_its_other_links(wsfs_mount):
    """The hidden name libfuse gives an unlinked open file is no link: not for it, not for its other names."""
    out = wsfs_mount.ws / "j" / "output"
    os.mkdir(wsfs_mount.ws / "j")
    fd = os.open(out / "g", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.link(out / "g", out / "f")
        assert os.fstat(fd).st_nlink == 2
        os.unlink(out / "g")
        assert (os.fstat(fd).st_nlink, os.lstat(out / "f").st_nlink) == (1, 1)
        os.link(out / "f", out / "h")
        open(out / "x", "w").close()
        os.rename(out / "x", out / "h")  # over an open file's other name
        assert (os.fstat(fd).st_nlink, os.lstat(out / "f").st_nlink) == (1, 1)
        os.unlink(out / "f")
        assert os.fstat(fd).st_nlink == 0
    finally:
        os.close(fd)
    assert sorted(os.listdir(out)) == ["h"]


@pytest.mark.mount
def test_rename_between_two_links_of_one_open_file_changes_nothing(wsfs_mount):
    """rename(2): two names of one file stay as they are; libfuse hid the open target and a vanished."""
    out = wsfs_mount.ws / "j" / "output"
    os.mkdir(wsfs_mount.ws / "j")
    (out / "a").write_bytes(b"data")
    os.link(out / "a", out / "b")
    fd_a, fd_b = os.open(out / "a", os.O_RDWR), os.open(out / "b", os.O_RDWR)
    try:
        os.rename(out / "a", out / "b")
        assert sorted(os.listdir(out)) == ["a", "b"]
        assert os.lstat(out / "a").st_nlink == 2 and os.fstat(fd_b).st_nlink == 2
        # Writing through the name libfuse now files under b must neither hang nor go astray.
        os.pwrite(fd_a, b"DATA", 0)
        assert (out / "a").read_bytes() == (out / "b").read_bytes() == b"DATA"
    finally:
        os.close(fd_a)
        os.close(fd_b)
    assert sorted(os.listdir(out)) == ["a", "b"]
    assert [e["path"] for e in map(json.loads, open(wsfs_mount.ws / "j" / ".manifest"))] == ["output/a", "output/b"]


@pytest.mark.mount
def test_rename_between_two_links_of_one_file_keeps_both_in_the_manifest(wsfs_mount):
    """The backing rename does nothing there; the manifest moved a's entry onto b, and a was gone from it."""
    job = wsfs_mount.ws / "j"
    os.mkdir(job)
    (job / "output" / "a").write_bytes(b"data")
    os.link(job / "output" / "a", job / "output" / "b")
    os.rename(job / "output" / "a", job / "output" / "b")
    assert sorted(os.listdir(job / "output")) == ["a", "b"]
    assert [e["path"] for e in map(json.loads, open(job / ".manifest"))] == ["output/a", "output/b"]
    assert json.loads((job / ".job").read_text())["usage"] == {"bytes": 8, "files": 2}


@pytest.mark.mount
def test_a_file_open_across_rename_exchange_is_recorded_under_its_new_name(wsfs_mount):
    """After RENAME_EXCHANGE the open files of the target still counted as the target's: at close the
    written file's entry was not updated (and its other names' caches could be dropped under it)."""
    job = wsfs_mount.ws / "j"
    os.mkdir(job)
    (job / "output" / "a").write_bytes(b"a")
    fd = os.open(job / "output" / "b", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"b" * 100)
        renameat2(str(job / "output" / "a"), str(job / "output" / "b"), RENAME_EXCHANGE)
        os.write(fd, b"b" * 100)
    finally:
        os.close(fd)
    manifest = {e["path"]: e["size"] for e in map(json.loads, open(job / ".manifest"))}
    assert manifest == {"output/a": 200, "output/b": 1}


@pytest.mark.mount
def test_after_a_rename_between_two_links_both_names_show_writes_through_an_open_fd(wsfs_mount):
    """libfuse files the open a under b after that rename: wsfs must too, or a's new lookup stays stale."""
    out = wsfs_mount.ws / "j" / "output"
    os.mkdir(wsfs_mount.ws / "j")
    fd = os.open(out / "a", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.link(out / "a", out / "b")
        os.rename(out / "a", out / "b")
        assert (os.lstat(out / "a").st_size, os.lstat(out / "b").st_size) == (0, 0)
        os.posix_fallocate(fd, 0, 5000)
        assert (os.lstat(out / "a").st_size, os.lstat(out / "b").st_size) == (5000, 5000)
    finally:
        os.close(fd)


@pytest.mark.mount
def test_rename_noreplace_onto_an_open_file_fails_with_eexist(wsfs_mount):
    """libfuse hides an open target before a rename: NOREPLACE must still see it (the kernel checks first)."""
    out = wsfs_mount.ws / "j" / "output"
    os.mkdir(wsfs_mount.ws / "j")
    (out / "a").write_bytes(b"new")
    (out / "b").write_bytes(b"old")
    fd = os.open(out / "b", os.O_RDONLY)
    try:
        with pytest.raises(FileExistsError):
            renameat2(str(out / "a"), str(out / "b"), RENAME_NOREPLACE)
        assert ((out / "a").read_bytes(), (out / "b").read_bytes()) == (b"new", b"old")
        assert os.pread(fd, 10, 0) == b"old" and os.fstat(fd).st_nlink == 1
    finally:
        os.close(fd)
    assert sorted(os.listdir(out)) == ["a", "b"]
    assert [e["path"] for e in map(json.loads, open(wsfs_mount.ws / "j" / ".manifest"))] == ["output/a", "output/b"]


@pytest.mark.mount
def test_unlink_of_an_open_link_then_rename_of_the_other_onto_its_name_moves_it(wsfs_mount):
    """The rename after an unlink is not libfuse's hide-then-rename of one request: a moves to b."""
    out = wsfs_mount.ws / "j" / "output"
    os.mkdir(wsfs_mount.ws / "j")
    (out / "a").write_bytes(b"data")
    os.link(out / "a", out / "b")
    fd = os.open(out / "b", os.O_RDONLY)
    try:
        os.unlink(out / "b")
        os.rename(out / "a", out / "b")
        assert sorted(os.listdir(out)) == ["b"]
        assert os.fstat(fd).st_nlink == 1
    finally:
        os.close(fd)
