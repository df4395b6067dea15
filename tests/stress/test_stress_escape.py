"""Stress 5, escape and permission, through a real mount (docs/spec.md §12).

Escape: ``tests/core/test_tree.py`` proves the walker at core level.  Here the
same holds for the whole daemon under a race: swapper threads keep replacing,
in the backing data dir, a directory of a job (a nested dir, the area itself,
or the job's whole tree) and a file in it with symlinks to a canary tree
outside the data dir, while worker threads operate through the mount on paths
below them (create, write, read, stat, list, unlink, mkdir, rmdir, rename,
chmod, chown, utime, setxattr, removexattr, truncate, symlink, link, mkfifo).
The workers never follow a link themselves (``openat2`` with
``RESOLVE_NO_SYMLINKS`` to each parent, ``*at`` calls on the last name), so
whatever reached the canary would have been the daemon's doing.  Afterwards
the canary is byte for byte, name for name, mode, time and xattr as it was,
no call through the mount ever returned its data, its names or its inodes,
and the daemon logged no error.  Both walkers run: ``openat2`` and the
component-by-component one of kernels before 5.6 (``WSFS_NO_OPENAT2=1``).

Permission: mounted as root with ``--allow-other``, ``nobody`` (via
``setpriv``) against root's jobs, for what ``tests/mount/test_users.py`` does not
cover already: a 0700 job cannot be listed or read, root's files cannot be
chmod-ed, touched, truncated, given xattrs, linked or replaced, a hidden job
cannot be restored (nor a failed one resumed), an ended one not archived; and
device nodes or setuid
binaries put straight into the backing dir do nothing through the mount
(``nodev``, ``nosuid``).

``WSFS_STRESS=full`` swaps tens of thousands of times per plant and walker;
``WSFS_SEED`` reproduces the threads' choices.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import json
import os
import random
import shutil
import stat
import threading
import time
from pathlib import Path

import pytest
from conftest import NOBODY, as_nobody, require_fuse, sh
from conftest import wait_until as conftest_wait_until
from escape_support import FIXED_NS, VICTIM, make_mirror, snapshot
from stress_support import StressMount, replay, seed, size

from wsfs.core.tree import Tree

SWAPS = size(1_000, 40_000)          # per plant and walker: each swap puts the link in and takes it out
WORKERS = 3
REAL_DATA = b"the job's own data\n"
CANARY_ONLY = ("lnk", "canary-only")  # names only the canary has: a listing through the mount must not show them
RENAME_EXCHANGE = 2
_SYS_RENAMEAT2 = {"x86_64": 316, "aarch64": 276}.get(os.uname().machine)
_libc = ctypes.CDLL(None, use_errno=True)
# What a worker may be told while its paths are swapped under it.  EIO comes from the kernel: it
# finds a cached inode whose type changed (fuse_lookup -> fuse_make_bad); the daemon's own EIO is a
# logged traceback, which daemon_errors() catches.
RACE_ERRNOS = {errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.EIO,
               errno.EPERM, errno.EOPNOTSUPP, errno.ENODATA, errno.EINVAL, errno.ESTALE, errno.EXDEV,
               errno.EBUSY,                     # libfuse: no hidden name for an open file it unlinks
               errno.ENXIO, errno.EAGAIN, errno.EPIPE}  # a FIFO a worker made, used without a partner

SEED = seed()


def exchange(dir_fd: int, a: str, b: str) -> None:
    """renameat2(RENAME_EXCHANGE): both names stay, their inodes trade places atomically."""
    ret = _libc.syscall(_SYS_RENAMEAT2, dir_fd, a.encode(), dir_fd, b.encode(), ctypes.c_uint(RENAME_EXCHANGE))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), a)


class Swapper(threading.Thread):
    """Swaps ``name`` in ``parent`` (a real dir or file) with a symlink to a target, ``count`` times.

    Works from an fd of ``parent`` (never swapped itself), so the test's own renames can never land
    in the canary.  Two ways, at random: an atomic exchange, and the rename dance (move the real one
    away, rename a fresh symlink over the name, then undo), which also leaves moments with no entry.
    ``shared``: the workers use the name too (the file swapper), so only exchanges, each of which
    may find the name gone or replaced by them, and the round is then put right and skipped.
    """

    def __init__(self, parent: str, name: str, targets: list[str], count: int, rng: random.Random,
                 shared: bool = False):
        super().__init__(name=f"swap-{name}", daemon=True)
        self.fd = os.open(parent, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
        self.real, self.link, self.away = name, f".{name}.link", f".{name}.away"
        self.targets, self.count, self.rng, self.shared = targets, count, rng, shared
        self.done = self.skipped = 0
        self.error: BaseException | None = None

    def hold(self, link_in: bool = True) -> None:
        """Keep the link in briefly, the real one longer: the kernel caches what a lookup saw for a
        second (a link: the caller's own walk refuses then, the daemon sees nothing), so the daemon
        is reached most while the real one is cached and the link comes and goes under it."""
        pause = self.rng.choice((0, 0, 0.00005, 0.0002) if link_in else (0.0005, 0.001, 0.002))
        if pause:
            time.sleep(pause)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def discard(self, name: str) -> None:
        """Remove what a round left under ``name``: our symlink, or what a worker made at the real name."""
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            self.rename(name, f".{self.real}.junk{self.done}.{self.skipped}")

    def exchange_round(self) -> None:
        try:
            exchange(self.fd, self.real, self.link)       # the link is in place
        except FileNotFoundError:                         # a worker removed the real one meanwhile
            self.skipped += 1
            return
        self.hold()
        try:
            exchange(self.fd, self.real, self.link)       # the real one is back
        except FileNotFoundError:                         # a worker removed our link (unlink, rename)
            self.rename(self.link, self.real)
            self.skipped += 1
            return
        self.done += 1

    def dance_round(self) -> None:
        self.rename(self.real, self.away)                 # no entry at all for a moment
        self.rename(self.link, self.real)
        self.hold()                                       # the link is in place
        self.rename(self.real, self.link)
        self.rename(self.away, self.real)
        self.done += 1

    def run(self) -> None:
        try:
            while self.done < self.count:
                self.discard(self.link)
                os.symlink(self.rng.choice(self.targets), self.link, dir_fd=self.fd)
                if self.shared or (_SYS_RENAMEAT2 is not None and self.rng.random() < 0.5):
                    self.exchange_round()
                else:
                    self.dance_round()
                self.discard(self.link)
                self.hold(link_in=False)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def restore(self) -> None:
        """Put the real entry back whatever step an error stopped at (nothing to do normally)."""
        names = set(os.listdir(f"/proc/self/fd/{self.fd}"))
        if self.away in names:
            self.discard(self.real)
            self.rename(self.away, self.real)
        elif self.real in names and stat.S_ISLNK(os.stat(self.real, dir_fd=self.fd, follow_symlinks=False).st_mode):
            if self.link in names:
                exchange(self.fd, self.real, self.link)
        self.discard(self.link)
        os.close(self.fd)


class ClientSideError(OSError):
    """The worker's own walk to a parent refused a link: the call never reached the daemon."""


class Worker(threading.Thread):
    """Random operations through the mount below ``base`` until told to stop; counts the outcomes.

    The worker itself never follows a symlink: it reaches each parent with ``openat2``
    (``RESOLVE_NO_SYMLINKS``) from the mount's root and acts on the last name with an ``*at`` call
    that does not follow it.  A symlink the daemon reports is text the *caller* would follow in its
    own namespace, with its own rights (so would any filesystem's); what is tested here is that the
    daemon, handed a path whose backing entry turned into a link meanwhile, never follows it.
    """

    # Names the workers make; CANARY_ONLY ones are only aimed at (unlink, chmod ...), never made, so
    # a listing that shows one has looked into the canary.
    MADE = ["victim", "sub/victim", "empty", "sub", "n0", "n1", "n2", "sub/n0", "sub/n1", "d0", "sub/d0",
            "empty/x"]
    NAMES = MADE + list(CANARY_ONLY)

    def __init__(self, root_fd: int, base: str, rng: random.Random, canary_inodes: set[int],
                 stop: threading.Event):
        super().__init__(name=f"worker-{rng.random():.6f}", daemon=True)
        self.root_fd, self.base, self.rng, self.canary_inodes, self.stop = root_fd, base, rng, canary_inodes, stop
        self.outcomes: collections.Counter = collections.Counter()
        self.leaks: list[str] = []
        self.error: BaseException | None = None

    def path(self, made: bool = False) -> str:
        return self.rng.choice(self.MADE if made else self.NAMES)

    @contextlib.contextmanager
    def at(self, rel: str, flags: int = os.O_PATH | os.O_DIRECTORY):
        """``(fd of rel's parent, rel's last name)``, the parent reached without following a link."""
        parent, _, name = rel.rpartition("/")
        fd = self.openat2(f"{self.base}/{parent}".rstrip("/"), flags)
        try:
            yield fd, name
        finally:
            os.close(fd)

    def openat2(self, path: str, flags: int) -> int:
        try:
            return Tree._openat2(self.root_fd, path, flags)
        except OSError as exc:
            raise ClientSideError(exc.errno, exc.strerror) from None

    def open(self, rel: str, flags: int, mode: int = 0o644) -> int:
        with self.at(rel) as (dfd, name):
            return os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK, mode, dir_fd=dfd)  # FIFOs never block

    def check_stat(self, st: os.stat_result, rel: str) -> None:
        if st.st_ino in self.canary_inodes or st.st_mtime_ns == FIXED_NS:
            self.leaks.append(f"stat {rel} showed the canary's inode {st.st_ino} / mtime {st.st_mtime_ns}")

    def check_data(self, data: bytes, rel: str) -> None:
        if VICTIM in data:
            self.leaks.append(f"read {rel} returned the canary's data")

    # Each op: one call through the mount on a path below base.
    def op_create(self):
        fd = self.open(self.path(made=True), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            os.write(fd, REAL_DATA)
        finally:
            os.close(fd)

    def op_overwrite(self):
        rel = self.path()
        fd = self.open(rel, os.O_WRONLY | self.rng.choice((os.O_TRUNC, os.O_APPEND, 0)))
        try:
            self.check_stat(os.fstat(fd), rel)
            os.write(fd, b"overwritten\n")
        finally:
            os.close(fd)

    def read(self, rel: str, pause: float = 0) -> None:
        fd = self.open(rel, os.O_RDONLY)
        try:
            self.check_stat(os.fstat(fd), rel)
            if pause:
                time.sleep(pause)
            self.check_data(os.read(fd, 1 << 16), rel)
        finally:
            os.close(fd)

    def op_read(self):
        self.read(self.path())

    def op_read_slowly(self):
        """Open while it is real, read after the swapper had time to act: still the real file."""
        self.read(self.path(), 0.001)

    def op_stat(self):
        rel = self.path()
        with self.at(rel) as (dfd, name):
            self.check_stat(os.stat(name, dir_fd=dfd, follow_symlinks=False), rel)

    def op_list(self):
        rel = self.rng.choice(("", "sub", "empty"))
        fd = self.openat2(f"{self.base}/{rel}".rstrip("/"), os.O_RDONLY | os.O_DIRECTORY)
        try:
            names = os.listdir(fd)
        finally:
            os.close(fd)
        if set(names) & set(CANARY_ONLY):
            self.leaks.append(f"listing {rel or '.'} showed the canary's names {sorted(names)}")

    def op_unlink(self):
        with self.at(self.path()) as (dfd, name):
            os.unlink(name, dir_fd=dfd)

    def op_mkdir(self):
        with self.at(self.path(made=True)) as (dfd, name):
            os.mkdir(name, 0o755, dir_fd=dfd)

    def op_rmdir(self):
        with self.at(self.path()) as (dfd, name):
            os.rmdir(name, dir_fd=dfd)

    def op_rename(self):
        # Never a name onto itself, nor a dir into itself: libfuse's high-level path locking waits
        # forever on such a rename (try_get_path2 write-locks the source, then finds it again on the
        # target's path), and once its dentries went stale by a type change behind its back (the
        # swaps; docs/spec.md §2 forbids them) the kernel no longer refuses them first.  Through the mount
        # alone the kernel always does (EINVAL, or success without asking the daemon).
        while True:
            src, dst = self.path(), self.path(made=True)
            if src != dst and not src.startswith(dst + "/") and not dst.startswith(src + "/"):
                break
        with self.at(src) as (sfd, sname), self.at(dst) as (dfd, dname):
            os.rename(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)

    def by_proc(self, rel: str):
        """``/proc/self/fd/N`` of an ``O_PATH`` fd of rel itself (never what it points to)."""
        fd = self.open(rel, os.O_PATH)
        return fd, f"/proc/self/fd/{fd}"

    def op_chmod(self):
        fd, path = self.by_proc(self.path())
        try:
            if stat.S_ISLNK(os.fstat(fd).st_mode):
                raise OSError(errno.ELOOP, "a symlink")
            os.chmod(path, self.rng.choice((0o600, 0o777, 0o4755, 0o000)))
        finally:
            os.close(fd)

    def op_chown(self):
        with self.at(self.path()) as (dfd, name):
            os.chown(name, 1234, 1234, dir_fd=dfd, follow_symlinks=False)

    def op_utime(self):
        with self.at(self.path()) as (dfd, name):
            os.utime(name, ns=(1, 1), dir_fd=dfd, follow_symlinks=False)

    def op_setxattr(self):
        fd = self.open(self.path(), os.O_RDONLY)
        try:
            os.setxattr(fd, "user.evil", b"1")
        finally:
            os.close(fd)

    def op_removexattr(self):
        fd = self.open(self.path(), os.O_RDONLY)
        try:
            os.removexattr(fd, "user.canary")
        finally:
            os.close(fd)

    def op_truncate(self):
        """By path (a setattr without a file handle): through the magic link of an O_PATH fd."""
        fd, path = self.by_proc(self.path())
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a file")
            os.truncate(path, self.rng.choice((0, 1 << 16)))
        finally:
            os.close(fd)

    def op_ftruncate(self):
        fd = self.open(self.path(), os.O_WRONLY)
        try:
            os.ftruncate(fd, self.rng.choice((0, 1 << 16)))
        finally:
            os.close(fd)

    def op_symlink(self):
        with self.at(self.path(made=True)) as (dfd, name):
            os.symlink(self.rng.choice(("victim", "/etc/passwd", "../../..")), name, dir_fd=dfd)

    def op_link(self):
        with self.at(self.path()) as (sfd, sname), self.at(self.path(made=True)) as (dfd, dname):
            os.link(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)

    def op_mkfifo(self):
        with self.at(self.path(made=True)) as (dfd, name):
            os.mkfifo(name, 0o600, dir_fd=dfd)

    OPS = [name for name in dir() if name.startswith("op_")]

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                name = self.rng.choice(self.OPS)
                try:
                    getattr(self, name)()
                    self.outcomes[(name, "ok")] += 1
                except ClientSideError as exc:
                    # The kernel still holds a link it was shown (for up to the entry timeout): this
                    # call never reached the daemon.  Let the swapper move on instead of spinning.
                    self.outcomes[(name, "client-" + errno.errorcode.get(exc.errno, str(exc.errno)))] += 1
                    time.sleep(0.002)
                except OSError as exc:
                    self.outcomes[(name, errno.errorcode.get(exc.errno, exc.errno))] += 1
                    if exc.errno not in RACE_ERRNOS:
                        self.leaks.append(f"{name}: unexpected {exc!r}")
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def make_real_tree(base: Path) -> None:
    """The shape the workers expect (victim, sub/victim, empty/), made through the mount."""
    (base / "sub").mkdir(parents=True, exist_ok=True)
    (base / "empty").mkdir(exist_ok=True)
    for rel in ("victim", "sub/victim"):
        (base / rel).write_bytes(REAL_DATA)


def make_canary(canary: Path) -> None:
    """The mirror of test_tree (victim, sub/victim, empty/, lnk, with xattrs and fixed times) plus a
    name only it has, twice: at the top (for the dir plants) and below ``job/output`` (for the job plant)."""
    for base in (canary / "top", canary / "job" / "output"):
        make_mirror(str(base))
        only = base / "canary-only"
        only.write_bytes(VICTIM)
        os.utime(only, ns=(FIXED_NS, FIXED_NS))
        os.utime(base, ns=(FIXED_NS, FIXED_NS))


# plant -> (the backing dir whose entry is swapped, relative to DATA/jobs; the canary it points to;
#           where the workers operate, relative to the job's view)
PLANTS = {
    "nested": ("J/output", "d", "top", "output/d"),
    "area": ("J", "output", "top", "output"),
    "job": ("", "J", "job", "output"),
}


def wait_until(condition, what: str, timeout: float = 30.0) -> None:
    conftest_wait_until(condition, what, timeout, tolerate=OSError)


@pytest.fixture
def escape_mount(tmp_path, request):
    require_fuse()
    mounts = []

    def start(**env):
        m = StressMount(tmp_path / f"m{len(mounts)}", env=env)
        mounts.append(m)
        return m.start()
    try:
        yield start
    finally:
        for m in mounts:
            m.stop()


@pytest.mark.mount
@pytest.mark.parametrize("walker", ["openat2", "walk"])
@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_swapping_in_symlinks_during_use_never_reaches_outside(escape_mount, tmp_path, plant, walker):
    print(replay(SEED))
    # No kernel cache: it would hide the swaps from the daemon for its timeout, and the daemon's
    # walker is what is under test here.
    m = escape_mount(WSFS_CACHE_TIMEOUT="0", **({"WSFS_NO_OPENAT2": "1"} if walker == "walk" else {}))
    rng = random.Random(f"{SEED}:{plant}:{walker}")
    canary = tmp_path / "canary"
    make_canary(canary)
    before = snapshot(str(canary))
    canary_inodes = {os.lstat(os.path.join(d, n)).st_ino for d, dirs, files in os.walk(canary)
                     for n in dirs + files}
    parent_rel, name, target, work_rel = PLANTS[plant]
    os.mkdir(m.ws / "J")
    work = m.ws / "J" / work_rel
    make_real_tree(work)
    parent = m.data / "jobs" / parent_rel
    absolute = str(canary / target)
    swappers = [Swapper(str(parent), name, [absolute, os.path.relpath(absolute, parent)], SWAPS, rng)]
    # The file below: a link as the last component (O_NOFOLLOW's part of the job).
    file_parent = m.data / "jobs" / "J" / work_rel
    swappers.append(Swapper(str(file_parent), "victim", [str(canary / target / "victim")], SWAPS, rng,
                            shared=True))
    stop = threading.Event()
    root_fd = os.open(m.mnt, os.O_PATH | os.O_DIRECTORY)
    workers = [Worker(root_fd, f"workspaces/J/{work_rel}", random.Random(rng.random()), canary_inodes, stop)
               for _ in range(WORKERS)]
    try:
        for t in workers + swappers:
            t.start()
        for s in swappers:
            s.join()
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=120)
        for s in swappers:
            s.join(timeout=60)
            s.restore()
        os.close(root_fd)
    assert all(not w.is_alive() for w in workers), "a worker is stuck in a call through the mount"
    for t in workers + swappers:
        assert t.error is None, f"{t.name}: {t.error!r}"
    outcomes = sum((w.outcomes for w in workers), collections.Counter())
    by_outcome = collections.Counter()
    for (_op, what), n in outcomes.items():
        by_outcome["ok" if what == "ok" else "client" if what.startswith("client-") else what] += n
    print(f"{plant}/{walker}: {[s.done for s in swappers]} swaps ({swappers[1].skipped} file rounds disturbed); "
          f"calls: {by_outcome['ok']} done, {by_outcome['client']} refused by the caller's own walk, "
          f"daemon's answers {dict(by_outcome.most_common())}")
    assert [s.done for s in swappers] == [SWAPS, SWAPS]
    # The race ran both ways, at the daemon: calls it carried out, and calls it refused because
    # a link had come in under it.
    assert by_outcome["ok"] and by_outcome["ELOOP"] + by_outcome["ENOTDIR"], by_outcome
    leaks = [leak for w in workers for leak in w.leaks]
    assert leaks == [], leaks[:20]
    assert snapshot(str(canary)) == before, "the canary changed"
    assert sorted(os.listdir(tmp_path / "canary")) == ["job", "top"]
    # The mount is none the worse: the job takes a new file and ends with a receipt.  First the
    # kernel's cache must let go of the links it saw (entry and attr timeouts: a second).
    for path in (m.ws / "J", m.ws / "J" / "output", work):
        wait_until(lambda: stat.S_ISDIR(os.lstat(path).st_mode), f"{path} is a directory again")
    (m.ws / "J" / "output" / "after").write_bytes(b"after the race\n")
    sh("echo completed > .state", cwd=m.ws / "J")
    receipt = json.loads((m.ws / "J" / "receipt.json").read_text())
    assert "output/after" in {o["path"] for o in receipt["outputs"]}
    assert m.daemon_errors() == []


# -- permissions ----------------------------------------------------------------------------------

PERMISSION_CONFIG = """
sweep_interval = "1000d"
[retention]
failed = "0s"
"""


@pytest.fixture
def shared_mount(tmp_path):
    require_fuse()
    m = StressMount(tmp_path / "m", config=PERMISSION_CONFIG, allow_other=True)
    try:
        m.start()
        if as_nobody("true", "/").returncode != 0:
            pytest.skip("setpriv cannot switch to uid 65534 here")
        yield m
    finally:
        m.stop()


def refused(command: str, cwd, *messages: str) -> None:
    """``command`` run as nobody fails with one of ``messages`` (strerror text) on stderr."""
    result = as_nobody(command, cwd=cwd)
    assert result.returncode != 0, (command, result.stdout)
    assert any(message in result.stderr for message in messages), (command, result.stderr)


@pytest.mark.mount
def test_nobody_cannot_list_or_read_a_0700_job(shared_mount):
    m = shared_mount
    os.mkdir(m.ws / "private", 0o700)
    assert stat.S_IMODE(os.stat(m.ws / "private").st_mode) == 0o700
    (m.ws / "private" / "output" / "f").write_text("secret\n")
    os.chmod(m.ws / "private" / "output" / "f", 0o644)  # readable on its own: the job's mode is what stops it
    for command in ("ls workspaces/private", "ls workspaces/private/output", "cat workspaces/private/output/f",
                    "cat workspaces/private/.job", "cat workspaces/private/.state", "cat workspaces/private/.manifest",
                    "stat workspaces/private/output", "echo x > workspaces/private/output/g",
                    "echo completed > workspaces/private/.state"):
        refused(command, m.mnt, "Permission denied")
    # Listed (workspaces/ is 1777, like /tmp), but nothing inside.
    assert "private" in as_nobody("ls workspaces", cwd=m.mnt).stdout.split()
    assert (m.ws / "private" / ".state").read_text() == "running\n"
    assert m.daemon_errors() == []


@pytest.mark.mount
def test_nobody_cannot_change_roots_files_in_a_0755_job(shared_mount):
    m = shared_mount
    os.mkdir(m.ws / "rootjob")
    public = m.ws / "rootjob" / "output" / "public.txt"
    public.write_text("anyone may read\n")
    os.chmod(public, 0o644)
    os.mkdir(m.ws / "mine")
    os.chown(m.data / "jobs" / "mine", NOBODY, NOBODY)  # the user's own job, to link and move into
    for area in ("input", "output", "temp"):
        os.chown(m.data / "jobs" / "mine" / area, NOBODY, NOBODY)
    before = snapshot(str(m.data / "jobs" / "rootjob"))
    for command, message in {
        "chmod 666 workspaces/rootjob/output/public.txt": "Operation not permitted",
        "chown 65534 workspaces/rootjob/output/public.txt": "Operation not permitted",
        "touch -d 2001-01-01 workspaces/rootjob/output/public.txt": ("Operation not permitted", "Permission denied"),
        "touch workspaces/rootjob/output/public.txt": "Permission denied",
        "truncate -s 0 workspaces/rootjob/output/public.txt": "Permission denied",
        "setfattr -n user.x -v 1 workspaces/rootjob/output/public.txt": "Permission denied",
        # protected_hardlinks refuses a link to someone else's file first (EPERM), else the dir's mode.
        "ln workspaces/rootjob/output/public.txt workspaces/rootjob/output/hard": ("Operation not permitted",
                                                                                   "Permission denied"),
        "ln -s public.txt workspaces/rootjob/output/soft": "Permission denied",
        "mkfifo workspaces/rootjob/output/fifo": "Permission denied",
        "cp /etc/hostname workspaces/rootjob/output/public.txt": "Permission denied",
        "mv workspaces/rootjob/output/public.txt workspaces/mine/output/": "Permission denied",
        "rm -rf workspaces/rootjob/output": "Permission denied",
        "echo archived > workspaces/rootjob/.state": "Permission denied",
        "echo 'stage evil' > workspaces/rootjob/.state": "Permission denied",
        "mkdir workspaces/rootjob/extra": "Permission denied",
    }.items():
        refused(command, m.mnt, *([message] if isinstance(message, str) else message))
    # Its id is taken for everyone, and a user's own job cannot be made over it.
    refused("mkdir workspaces/rootjob", m.mnt, "File exists")
    refused("echo 'create rootjob' > .wsfs/control", m.mnt, "File exists")
    assert snapshot(str(m.data / "jobs" / "rootjob")) == before
    assert (m.ws / "rootjob" / ".state").read_text() == "running\n"
    assert m.daemon_errors() == []


@pytest.mark.mount
def test_nobody_cannot_restore_resume_or_archive_roots_ended_jobs(shared_mount):
    m = shared_mount
    for job, word in (("hidden", "failed soon hidden"), ("done", "completed"), ("broke", "failed")):
        os.mkdir(m.ws / job)
        sh(f"echo '{word}' > workspaces/{job}/.state", cwd=m.mnt)
    sh("echo sweep > .wsfs/control", cwd=m.mnt)  # failed = "0s": both failed jobs are hidden now
    sh("echo 'restore broke' > .wsfs/control", cwd=m.mnt)
    assert not (m.ws / "hidden").exists() and (m.ws / "broke").exists()
    jobs_before = (m.mnt / ".wsfs" / "jobs").read_text()
    refused("echo 'restore hidden' > .wsfs/control", m.mnt, "Operation not permitted")
    refused("echo 'resume broke' > .wsfs/control", m.mnt, "Operation not permitted")
    refused("echo archived > workspaces/done/.state", m.mnt, "Permission denied")
    refused("echo archived > workspaces/broke/.state", m.mnt, "Permission denied")
    refused("echo 'doctor repair' > .wsfs/control", m.mnt, "Operation not permitted")
    assert (m.mnt / ".wsfs" / "jobs").read_text() == jobs_before
    events = [json.loads(line) for line in (m.mnt / ".wsfs" / "events").read_text().splitlines()]
    rejected = [(e["command"], e["errno"]) for e in events if e["kind"] == "rejected"]
    assert ("restore hidden", "EPERM") in rejected and ("resume broke", "EPERM") in rejected
    # Root still can.
    sh("echo 'restore hidden' > .wsfs/control", cwd=m.mnt)
    assert (m.ws / "hidden" / ".state").read_text() == "failed\n"
    assert m.daemon_errors() == []


@pytest.mark.mount
def test_device_nodes_made_in_the_backing_dir_do_not_work_through_the_mount(shared_mount):
    """``nodev``: even a node that reached the data dir behind the daemon's back opens as nothing."""
    m = shared_mount
    os.mkdir(m.ws / "J")
    temp = m.data / "jobs" / "J" / "temp"
    disk = os.stat(m.data).st_dev
    nodes = {"null": (stat.S_IFCHR, os.makedev(1, 3)), "zero": (stat.S_IFCHR, os.makedev(1, 5)),
             "disk": (stat.S_IFBLK, os.makedev(os.major(disk), os.minor(disk)))}
    for name, (kind, dev) in nodes.items():
        os.mknod(temp / name, kind | 0o666, dev)
    for name, (kind, dev) in nodes.items():
        through = m.ws / "J" / "temp" / name
        st = os.lstat(through)
        assert stat.S_IFMT(st.st_mode) == kind and st.st_rdev == dev  # it is shown as what it is ...
        for flags in (os.O_RDONLY, os.O_WRONLY, os.O_RDWR):
            with pytest.raises(OSError) as info:  # ... and opens as nothing, for root too
                os.close(os.open(through, flags))
            assert info.value.errno in (errno.EACCES, errno.ENXIO, errno.EPERM), (name, info.value)
        refused(f"head -c 16 workspaces/J/temp/{name}", m.mnt, "Permission denied")
    assert m.daemon_errors() == []


@pytest.mark.mount
def test_a_setuid_binary_put_in_a_job_runs_as_its_caller(shared_mount):
    """``nosuid``: root copies ``id`` into a job and makes it setuid root; nobody runs it as nobody."""
    m = shared_mount
    os.mkdir(m.ws / "J")
    binary = m.ws / "J" / "temp" / "id"
    shutil.copy(shutil.which("id"), binary)
    os.chmod(binary, 0o4755)
    assert os.stat(m.data / "jobs" / "J" / "temp" / "id").st_mode & stat.S_ISUID  # really setuid on disk
    result = as_nobody("workspaces/J/temp/id -u; workspaces/J/temp/id -ru", cwd=m.mnt)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(NOBODY), str(NOBODY)]
    assert m.daemon_errors() == []



# -- regressions: what the suites above found ---------------------------------------------------


def test_ending_a_job_whose_listed_files_changed_kind_behind_its_back(core, tmp_path):
    """The swap race left manifest entries naming what had become a dir, a symlink or a FIFO;
    the receipt step opened them to hash them and failed (EISDIR, ELOOP) on every attempt to
    end the job, which stayed half ended.  Such a name is no output: left out, the job ends.
    A parent swapped for a link to a canary is not followed either (nothing of it is read)."""
    from wsfs.core.model import JobState

    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "f").write_bytes(VICTIM)
    core.create_job("J", 0, 0)
    for rel in ("output/dir", "output/link", "output/fifo", "output/sub/f", "output/keep"):
        if rel == "output/sub/f":
            core.tree.mkdir("jobs", "J/output/sub")
        fd = core.tree.open("jobs", f"J/{rel}", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, REAL_DATA)
        core.manifest.put("J", rel, os.fstat(fd))
        os.close(fd)
    core.manifest.flush()
    out = Path(core.tree.data_dir) / "jobs" / "J" / "output"
    os.unlink(out / "dir")
    os.mkdir(out / "dir")
    os.unlink(out / "link")
    os.symlink(str(canary / "f"), out / "link")
    os.unlink(out / "fifo")
    os.mkfifo(out / "fifo")
    shutil.rmtree(out / "sub")
    os.symlink(str(canary), out / "sub")
    before = snapshot(str(canary))
    record = core.transition("J", JobState.COMPLETED)
    assert (record.state, record.pending) == ("completed", None)
    receipt = json.loads((out.parent / "receipt.json").read_text())
    assert [o["path"] for o in receipt["outputs"]] == ["output/keep"]
    assert snapshot(str(canary)) == before
