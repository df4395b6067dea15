#!/usr/bin/env python3
"""The wsfs benchmark harness (``make bench``): stdlib + psutil only.

    .venv/bin/python bench/run.py [--quick] [--runs N] [--only 1,3] [--json PATH] [--dir DIR] [--src DIR]
    .venv/bin/python bench/run.py --profile 1,3,4 [--profile-seconds 20]   # py-spy on the daemon

``--src DIR`` measures the ``wsfs/`` of another source tree (say ``git archive
COMMIT | tar -x -C DIR``) instead of this working tree's; the machine line
names the commit it matches.

Each filesystem workload runs on these systems, side by side:

* ``native``: a plain directory on the work dir's filesystem;
* ``wsfs``:   a fresh job's ``output/`` on a wsfs mount whose data dir is in the work dir (with
  kernel passthrough when its libfuse, the kernel and root allow it: ``.wsfs/status`` says);
* ``wsfs-served``: the same with ``WSFS_PASSTHROUGH=0`` (every read and write served by the
  daemon), only when ``wsfs`` has passthrough;
* ``passthrough_hp``: libfuse's own C++ low-level example (the ceiling of a FUSE server here)
  mirroring a plain directory, built from the same libfuse source as wsfs's
  (``tools/build-libfuse.sh``), with its defaults (passthrough on where the kernel has it);
* ``bindfs``: a bindfs mount (``bindfs -f SRC MNT``, bindfs' defaults) of a plain directory there.

Runs are interleaved (native, wsfs, ..., bindfs, native, wsfs, ...), each
measurement starts from a settled machine (``sync``, an empty wsfs trash, and
every FUSE server idle, so work one deferred never lands on another's
measurement), and the table shows the median of the runs.  After each
measurement the harness records the server's CPU time and how long it stayed
busy afterwards (``server_backlog_s``: wsfs' manifest thread and trash).
Ratios are *speed* ratios: throughput / throughput, or time(other) / time(wsfs),
so above 1.00x wsfs is the faster one, and a target "≥0.90×native" reads the
same for MB/s and for seconds.

Workloads (sizes of a full run; ``--quick`` lowers them):

1. sequential write of 1 GiB in 1 MiB blocks, fsync at the end (open..close timed); and
   64 MiB in 4 KiB writes, fsync at the end (row 1s: how SQLite and most programs write)
2. sequential read of that file in 1 MiB blocks, cold (``sync``, then
   ``posix_fadvise(DONTNEED)`` on the backing file and on the file through the
   mount) and hot (read again at once)
3. 10,000 files of 4 KiB in one directory: create+write+close, then stat all,
   then unlink all (Python ``os`` calls, ops/s per phase)
4. the running Python's standard library as a tarball (site-packages and
   __pycache__ excluded): ``tar -xf``, ``find``, ``rm -rf`` (wall time of each program)
5. 4 processes (forked, released together) each writing its own 256 MiB file
   in 1 MiB blocks + fsync; MB/s total
6. ``bash -c 'echo completed > .state'`` of a job with 100,000 files in
   ``temp/`` (wall time around the bash process, bash start-up included),
   against ``rm -rf`` of an identical tree on the bare disk (native) and
   through bindfs.  6 puts the files straight into the backing ``temp/`` (not
   in the manifest); 6m is a job whose 100,000 temp files are also in its
   manifest, as when a job wrote them through the mount (prepared offline
   through ``wsfs.store`` before the mount)
7. latency of open/read/close of ``.state`` (timed in-process, in Python)
   while workload 5 runs in the same job; p50 and p99 per run
8. ``Sweeper.sweep(now)`` in-process over 100,000 job records with 1,000 due
   (visible ones: hidden; or hidden ones past their grace: purged), each on a
   fresh copy of a populated data dir, then with none due (periodic pass)
9. RSS (psutil) of a daemon on a data dir with 100,000 jobs and 1,000,000
   manifest entries, after listing ``workspaces/``, reading ``.wsfs/status``,
   ``.wsfs/jobs``, ``.wsfs/events`` and ``cat`` of a few ``.job``/``.manifest``
10. real programs, wall time of each: ``git clone`` (no hard links) of a repository of the
   stdlib tree (~2,000 files); SQLite, 1,000 small transactions in WAL mode and in rollback
   mode (``synchronous=full``); ``rsync -a /usr/share/doc``; ``du -s``, ``ls -lR`` and
   ``find -type f`` of that copy; ``cp --reflink=auto`` of a 256 MiB file next to itself;
   ``python -m venv`` (with pip, from its bundled wheel)
11. ending after out-of-order writes: a job ``fallocate``s 1 GiB, writes it back to front,
   closes it, and 3 s later ``echo completed > .state`` is timed (wsfs and wsfs-served only)

Everything it mounts is unmounted in ``finally`` (also on SIGTERM/SIGINT);
the work dir is removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import dataclasses
import datetime
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tarfile
import time
import traceback
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
SRC = REPO  # the wsfs source tree measured (--src); its wsfs/ is what the daemon and the core run

MB = 1_000_000
MiB = 1 << 20
GiB = 1 << 30
ALL_SYSTEMS = ("native", "wsfs", "wsfs-served", "passthrough_hp", "bindfs")
SYSTEMS: tuple[str, ...] = ("native", "wsfs", "bindfs")  # those mounted in this run (Bench.mount_all)
WSFS_SYSTEMS = ("wsfs", "wsfs-served")
#: libfuse's passthrough_hp as tools/build-libfuse.sh left it in this venv, with its libfuse beside it
PASSTHROUGH_HP = Path(sys.prefix) / "lib" / "wsfs-libfuse" / "passthrough_hp"
MOUNT_TIMEOUT = 60.0

FULL = dict(runs=5, seq_bytes=GiB, block=MiB, small_write_bytes=64 * MiB, small_files=10_000, small_size=4096, par_procs=4,
            par_bytes=256 * MiB, temp_files=100_000, state_reads=1000, sweep_jobs=100_000, sweep_due=1000,
            sweep_none_reps=20, rss_jobs=100_000, rss_entries=1_000_000)
QUICK = dict(FULL, runs=3, seq_bytes=128 * MiB, small_write_bytes=16 * MiB, small_files=2000, par_bytes=32 * MiB, temp_files=10_000,
             sweep_jobs=10_000, sweep_due=100, sweep_none_reps=10, rss_jobs=10_000, rss_entries=100_000)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def human_count(n: int) -> str:
    return f"{n:,}"


def human_bytes(n: int) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n / MiB:.0f} MiB" if n >= MiB else f"{n} B"


def percentile(values, p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# -- mounts -----------------------------------------------------------------------------------------


def mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) if path.exists() else str(path)
    found = []
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 2:
                target = fields[1].replace("\\040", " ")
                if target == prefix or target.startswith(prefix + "/"):
                    found.append(target)
    return found


def is_mounted(path: Path) -> bool:
    target = os.path.abspath(path)
    with open("/proc/self/mounts") as f:
        return any(len(ln.split()) > 2 and ln.split()[1] == target for ln in f)


def force_unmount(path: str) -> None:
    for args in (["fusermount3", "-u", path], ["fusermount", "-u", path], ["fusermount3", "-uz", path],
                 ["fusermount", "-uz", path], ["umount", "-l", path]):
        if not is_mounted(Path(path)):
            return
        if shutil.which(args[0]):
            subprocess.run(args, capture_output=True)


class ServerProcess:
    """A FUSE server run as a foreground child; ``stop`` always unmounts."""

    name = "server"

    def __init__(self, mnt: Path, log_path: Path, env: dict | None = None):
        self.mnt = mnt
        self.log_path = log_path
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self._log = None

    def args(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        return True

    def start(self):
        self.mnt.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        env = dict(os.environ, **self.env)
        env["PYTHONPATH"] = str(SRC) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen(self.args(), stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env, cwd=str(SRC))
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before mounting:\n"
                                   f"{self.log_text()[-4000:]}")
            if is_mounted(self.mnt):
                try:
                    if self.ready():
                        return self
                except (OSError, ValueError):
                    pass
            time.sleep(0.02)
        raise RuntimeError(f"{self.name} did not mount {self.mnt} within {MOUNT_TIMEOUT:.0f}s:\n"
                           f"{self.log_text()[-4000:]}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def unmount_commands(self) -> list[list[str]]:
        return [["fusermount3", "-u", str(self.mnt)]]

    def stop(self) -> None:
        """Unmount cleanly, wait for the server to exit; escalate: -uz, terminate, kill."""
        if self.proc is None:
            return
        try:
            if is_mounted(self.mnt):
                for args in self.unmount_commands():
                    if is_mounted(self.mnt) and shutil.which(args[0]):
                        subprocess.run(args, capture_output=True)
                for tool in ("fusermount3", "fusermount"):
                    if is_mounted(self.mnt) and shutil.which(tool):
                        subprocess.run([tool, "-uz", str(self.mnt)], capture_output=True)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        finally:
            if is_mounted(self.mnt):
                force_unmount(str(self.mnt))
            if self._log:
                self._log.close()
            self.proc = None


class WsfsMount(ServerProcess):
    name = "wsfs"

    def __init__(self, mnt: Path, data: Path, log_path: Path, log_level: str = "info", env: dict | None = None):
        super().__init__(mnt, log_path, env)
        self.data = data
        self.log_level = log_level

    def fuse(self) -> dict:
        """What the mount negotiated: libfuse version, passthrough, readdirplus (``.wsfs/status``)."""
        return json.loads((self.mnt / ".wsfs" / "status").read_text()).get("fuse", {})

    def args(self):
        return [sys.executable, "-m", "wsfs", "--log-level", self.log_level, "mount", str(self.mnt),
                "--data", str(self.data), "--foreground"]

    def ready(self):
        json.loads((self.mnt / ".wsfs" / "status").read_text())
        return True

    def errors(self) -> list[str]:
        return [ln for ln in self.log_text().splitlines()
                if " ERROR " in ln or " CRITICAL " in ln or ln.startswith("Traceback")]


class PassthroughHpMount(ServerProcess):
    """libfuse's example/passthrough_hp.cc mirroring ``src`` (its defaults: caching on, and kernel
    passthrough for reads and writes where the kernel has it)."""

    name = "passthrough_hp"

    def __init__(self, src: Path, mnt: Path, log_path: Path):
        super().__init__(mnt, log_path, {"LD_LIBRARY_PATH": str(PASSTHROUGH_HP.parent)})
        self.src = src

    def args(self):
        # It holds an O_PATH fd for every inode the kernel knows (rsync of /usr/share/doc: thousands):
        # with the usual soft limit of 1,024 it fails with EMFILE, so it gets the hard limit.
        return ["sh", "-c", 'ulimit -n "$(ulimit -Hn)" && exec "$@"', "passthrough_hp",
                str(PASSTHROUGH_HP), "--foreground", str(self.src), str(self.mnt)]

    def ready(self):
        os.listdir(self.mnt)
        return True


class BindfsMount(ServerProcess):
    name = "bindfs"

    def __init__(self, src: Path, mnt: Path, log_path: Path):
        super().__init__(mnt, log_path)
        self.src = src

    def args(self):
        return ["bindfs", "-f", str(self.src), str(self.mnt)]

    def ready(self):
        os.listdir(self.mnt)
        return True

    def unmount_commands(self):
        return [["fusermount", "-u", str(self.mnt)], ["fusermount3", "-u", str(self.mnt)]]


# -- machine ------------------------------------------------------------------------------------------


def filesystem_of(path: Path) -> dict:
    path = str(path.resolve())
    best = None
    with open("/proc/self/mounts") as f:
        for line in f:
            dev, target, fstype, opts = line.split()[:4]
            target = target.replace("\\040", " ")
            if path == target or path.startswith(target.rstrip("/") + "/"):
                if best is None or len(target) >= len(best[1]):
                    best = (dev, target, fstype, opts)
    if best is None:
        return {}
    st = os.statvfs(path)
    return {"device": best[0], "mountpoint": best[1], "type": best[2], "options": best[3],
            "size_gb": round(st.f_blocks * st.f_frsize / 1e9, 1), "free_gb": round(st.f_bavail * st.f_frsize / 1e9, 1)}


def libfuse_versions() -> dict:
    out = {}
    # the libfuse wsfs loads (its binding's choice: the one built into this venv, else the system's)
    built = PASSTHROUGH_HP.parent / "libfuse3.so.3"
    lib3 = os.environ.get("WSFS_LIBFUSE3") or (str(built) if built.exists() else ctypes.util.find_library("fuse3"))
    if lib3:
        try:
            fn = ctypes.CDLL(lib3).fuse_pkgversion
            fn.restype = ctypes.c_char_p
            out["libfuse3"] = fn().decode()
        except (OSError, AttributeError):
            out["libfuse3"] = lib3
    if shutil.which("bindfs"):
        ver = subprocess.run(["bindfs", "--version"], capture_output=True, text=True).stdout.strip()
        out["bindfs"] = ver
        ldd = subprocess.run(["ldd", shutil.which("bindfs")], capture_output=True, text=True).stdout
        for pkg, soname in (("libfuse2", "libfuse.so.2"), ("libfuse3-3", "libfuse3.so.3")):
            if soname in ldd:
                ver = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", pkg + ":amd64"],
                                     capture_output=True, text=True).stdout.strip() if shutil.which("dpkg-query") else ""
                out["bindfs_libfuse"] = f"{soname} {ver}".strip()
    return out


def machine_info(work: Path) -> dict:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    git = code_state()
    import wsfs
    git["imported_from"] = os.path.dirname(wsfs.__file__)
    return {
        "cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / GiB, 1),
        "kernel": platform.release(), "os": _os_name(), "python": platform.python_version(),
        "workdir_fs": filesystem_of(work), "fuse": libfuse_versions(), "wsfs": wsfs.__version__, "git": git,
        "loadavg_at_start": os.getloadavg(),
    }


def code_state() -> dict:
    """Which commit's ``wsfs/`` is measured: HEAD, an older commit (a ``git archive`` in --src), or neither."""
    out = {"src": str(SRC)}

    def git(*args) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout

    try:
        out["head"] = git("rev-parse", "--short", "HEAD").strip()
        files = sorted(str(p.relative_to(SRC)) for p in (SRC / "wsfs").glob("*.py"))
        blobs = git("hash-object", *[str(SRC / f) for f in files]).split()
        mine = dict(zip(files, blobs, strict=True))
        for commit in git("rev-list", "-n", "50", "HEAD").split():
            tree = {}
            for row in git("ls-tree", commit, "wsfs/").splitlines():
                meta, _, name = row.partition("\t")
                if name.endswith(".py"):
                    tree[name] = meta.split()[2]
            if tree == mine:
                out["commit"] = git("rev-parse", "--short", commit).strip()
                break
        out["dirty"] = "commit" not in out
        out.setdefault("commit", out["head"])
    except (OSError, IndexError):
        pass
    return out


def _os_name() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


def machine_line(m: dict) -> str:
    fs = m["workdir_fs"]
    fuse = m["fuse"]
    return (f"{m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM; {m['os']}, kernel {m['kernel']}; "
            f"work dir on {fs.get('type')} ({fs.get('device')}); libfuse {fuse.get('libfuse3', '?')} (wsfs), "
            f"{fuse.get('bindfs', 'bindfs ?')} on {fuse.get('bindfs_libfuse', '?')}; Python {m['python']}; "
            f"wsfs {m['wsfs']} @ {m['git'].get('commit', '?')}"
            f"{' + uncommitted changes' if m['git'].get('dirty') else ''}"
            f"{'' if m['git'].get('dirty') or m['git'].get('commit') == m['git'].get('head') else ' (HEAD is ' + m['git'].get('head', '?') + ')'}")


# -- file primitives ------------------------------------------------------------------------------------


def write_file(path, nbytes: int, block: int, *, fsync: bool = True, buf: bytes | None = None) -> None:
    buf = buf or os.urandom(block)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        left = nbytes
        while left > 0:
            view = memoryview(buf)[:min(block, left)]
            while view:
                n = os.write(fd, view)
                view = view[n:]
                left -= n
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def small_files(d, names, data: bytes) -> tuple[float, float, float]:
    """Workload 3 in directory ``d``: seconds to create+write+close each of ``names`` (``data`` in
    each), to stat them, and to unlink them (Python ``os`` calls relative to one directory fd)."""
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        t0 = time.perf_counter()
        for name in names:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dfd)
            os.write(fd, data)
            os.close(fd)
        t1 = time.perf_counter()
        for name in names:
            os.stat(name, dir_fd=dfd)
        t2 = time.perf_counter()
        for name in names:
            os.unlink(name, dir_fd=dfd)
        t3 = time.perf_counter()
    finally:
        os.close(dfd)
    return t1 - t0, t2 - t1, t3 - t2


def read_file(path, block: int) -> int:
    buf = bytearray(block)
    fd = os.open(path, os.O_RDONLY)
    total = 0
    try:
        while True:
            n = os.readv(fd, [buf])
            if n == 0:
                return total
            total += n
    finally:
        os.close(fd)


def evict(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def resident_bytes(path) -> int | None:
    """Bytes of ``path`` in the page cache (util-linux fincore), or None."""
    if not shutil.which("fincore"):
        return None
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True)
    try:
        return int(out.stdout.strip())
    except ValueError:
        return None


def make_tree(root: Path, nfiles: int, per_dir: int = 1000, size: int = 1024) -> None:
    """``nfiles`` files of ``size`` bytes in subdirectories of ``per_dir`` (made with plain os calls)."""
    data = b"t" * size
    root.mkdir(parents=True, exist_ok=True)
    made = 0
    d = 0
    while made < nfiles:
        sub = root / f"d{d:03d}"
        sub.mkdir()
        dfd = os.open(sub, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i in range(min(per_dir, nfiles - made)):
                fd = os.open(f"f{i:04d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dfd)
                os.write(fd, data)
                os.close(fd)
        finally:
            os.close(dfd)
        made += min(per_dir, nfiles - made)
        d += 1


def run_timed(args, **kw) -> float:
    t0 = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True, **kw)
    elapsed = time.perf_counter() - t0
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(map(str, args))}` failed ({result.returncode}): "
                           f"{(result.stderr or result.stdout).strip()[-2000:]}")
    return elapsed


def spawn_writers(paths, nbytes: int, block: int):
    """Fork one writer per path, each blocked until ``release``; returns (pids, release)."""
    r, w = os.pipe()
    pids = []
    for path in paths:
        pid = os.fork()
        if pid == 0:  # the child: never returns into the harness (its finally blocks unmount)
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                os.close(w)
                os.read(r, 1)
                write_file(path, nbytes, block, fsync=True)
                code = 0
            except BaseException as exc:  # noqa: BLE001
                try:
                    os.write(2, f"writer {path}: {exc!r}\n".encode())
                except OSError:
                    pass
            finally:
                os._exit(code)
        pids.append(pid)
    os.close(r)

    def release():
        os.write(w, b"x" * len(pids))
        os.close(w)
    return pids, release


def reap(pid: int, block: bool = True) -> bool | None:
    """True when ``pid`` exited 0, False when it failed, None when still running (block=False)."""
    done, status = os.waitpid(pid, 0 if block else os.WNOHANG)
    if done == 0:
        return None
    return os.waitstatus_to_exitcode(status) == 0


# -- the harness ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Target:
    system: str
    view: Path      # where the workload runs
    backing: Path   # the same directory on the bare disk
    job: str | None = None


class Bench:
    def __init__(self, args, sizes: dict):
        self.args = args
        self.sizes = sizes
        self.work = Path(args.dir).resolve()
        self.native_dir = self.work / "native"
        self.wsfs = WsfsMount(self.work / "wsfs-mnt", self.work / "wsfs-data", self.work / "wsfs-daemon.log")
        self.bindfs = BindfsMount(self.work / "bindfs-src", self.work / "bindfs-mnt", self.work / "bindfs.log")
        # Every server a workload may run on, by system name; mount_all starts those this machine has.
        self.servers: dict[str, ServerProcess] = {
            "wsfs": self.wsfs,
            "wsfs-served": WsfsMount(self.work / "wsfs-served-mnt", self.work / "wsfs-served-data",
                                     self.work / "wsfs-served-daemon.log", env={"WSFS_PASSTHROUGH": "0"}),
            "passthrough_hp": PassthroughHpMount(self.work / "hp-src", self.work / "hp-mnt", self.work / "hp.log"),
            "bindfs": self.bindfs,
        }
        self.extra_daemons: list[WsfsMount] = []
        self.results: dict[str, dict[str, list]] = {}  # row -> system -> values
        self.raw: dict[str, list] = {}                 # workload -> sample dicts
        self.notes: dict[str, object] = {}
        self.daemon_errors: dict[str, list[str]] = {}
        self.tarball: Path | None = None

    # -- setup / teardown ------------------------------------------------------------------

    def prepare_workdir(self) -> None:
        for m in mounts_under(self.work):
            log(f"clearing a mount left by an earlier run: {m}")
            force_unmount(m)
        if mounts_under(self.work):
            raise RuntimeError(f"cannot clear the mounts under {self.work}: {mounts_under(self.work)}")
        if self.work.exists():
            subprocess.run(["rm", "-rf", "--one-file-system", str(self.work)], check=True)
        self.work.mkdir(parents=True)
        self.native_dir.mkdir()
        self.bindfs.src.mkdir()
        self.servers["passthrough_hp"].src.mkdir()  # type: ignore[attr-defined]

    def cleanup(self) -> None:
        for m in [*self.servers.values(), *self.extra_daemons]:
            try:
                m.stop()
            except Exception as exc:  # noqa: BLE001
                log(f"stopping {m.name} at {m.mnt}: {exc}")
        for m in mounts_under(self.work):
            force_unmount(m)
        left = mounts_under(self.work)
        if left:
            log(f"WARNING: still mounted: {left}; the work dir is kept")
            return
        logs = Path("/tmp/wsfs-bench-logs")
        logs.mkdir(exist_ok=True)
        for f in self.work.glob("*.log"):
            shutil.copy(f, logs / f.name)
        if not self.args.keep:
            subprocess.run(["rm", "-rf", "--one-file-system", str(self.work)])

    def need_mounts(self, selected) -> bool:
        return any(w in selected for w in (1, 2, 3, 4, 5, 6, 7, 10, 11))

    def mount_all(self, selected) -> None:
        """Mount what the selected workloads run on; SYSTEMS becomes the systems mounted."""
        global SYSTEMS
        systems = ["native"]
        if not self.need_mounts(selected):
            SYSTEMS = tuple(systems)
            return
        log(f"mounting wsfs on {self.wsfs.mnt} (data {self.wsfs.data})")
        self.wsfs.start()
        systems.append("wsfs")
        fuse = self.wsfs.fuse()
        self.notes["wsfs_fuse"] = fuse
        log(f"wsfs: libfuse {fuse.get('libfuse')}, passthrough {fuse.get('passthrough')}")
        if any(w in selected for w in (1, 2, 3, 4, 5, 10, 11)) and fuse.get("passthrough") not in (None, "off", False):
            served = self.servers["wsfs-served"]
            log(f"mounting wsfs without passthrough on {served.mnt}")
            served.start()
            systems.append("wsfs-served")
        if any(w in selected for w in (1, 2, 3, 4, 5, 10)):
            if PASSTHROUGH_HP.exists():
                hp = self.servers["passthrough_hp"]
                log(f"mounting passthrough_hp on {hp.mnt}")
                hp.start()
                systems.append("passthrough_hp")
            else:
                log(f"no {PASSTHROUGH_HP} (tools/build-libfuse.sh builds it): no passthrough_hp column")
        if any(w in selected for w in (1, 2, 3, 4, 5, 6, 10)):
            if not shutil.which("bindfs"):
                raise RuntimeError("bindfs is not installed (apt-get install bindfs, or `make bench`)")
            log(f"mounting bindfs {self.bindfs.src} on {self.bindfs.mnt}")
            self.bindfs.start()
            systems.append("bindfs")
        SYSTEMS = tuple(systems)

    # -- targets ------------------------------------------------------------------------------

    def target(self, system: str, label: str) -> Target:
        if system == "native":
            p = self.native_dir / label
            p.mkdir()
            return Target(system, p, p)
        m = self.servers[system]
        if isinstance(m, WsfsMount):
            os.mkdir(m.mnt / "workspaces" / label)
            return Target(system, m.mnt / "workspaces" / label / "output",
                          m.data / "jobs" / label / "output", job=label)
        src = m.src  # type: ignore[attr-defined]  # a mirror of a plain directory: bindfs, passthrough_hp
        (src / label).mkdir()
        return Target(system, m.mnt / label, src / label)

    def drop_target(self, t: Target) -> None:
        if t.system in WSFS_SYSTEMS:
            # Through the mount, so the job's manifest stays true; the job stays (running, empty).
            for entry in os.scandir(t.view):
                if entry.is_dir(follow_symlinks=False):
                    subprocess.run(["rm", "-rf", entry.path], check=True)
                else:
                    os.unlink(entry.path)
        else:
            shutil.rmtree(t.backing)

    def server(self, system: str) -> psutil.Process | None:
        m = self.servers.get(system)
        if m is None or m.proc is None:
            return None
        return psutil.Process(m.pid)

    def settle(self, system: str | None = None) -> None:
        """Start each measurement from a quiet machine: synced disk, empty trash, every server idle.

        Every server, not only the one measured next: work a server deferred
        (wsfs' manifest thread, its trash) must not land on another system's
        measurement.
        """
        os.sync()
        for m in self.servers.values():
            if isinstance(m, WsfsMount) and m.proc is not None:
                self.wait_trash(m)
        for m in self.servers.values():
            if m.proc is not None:
                self.wait_idle(m)
        os.sync()
        time.sleep(0.1)

    @staticmethod
    def wait_idle(m: ServerProcess, timeout: float = 900.0) -> float:
        """Wait until the server uses no CPU for 0.5 s; return how long it stayed busy."""
        proc = psutil.Process(m.pid)
        t0 = time.perf_counter()
        last = sum(proc.cpu_times()[:2])
        quiet = 0
        while time.perf_counter() - t0 < timeout:
            time.sleep(0.25)
            now = sum(proc.cpu_times()[:2])
            quiet = quiet + 1 if now - last < 0.01 else 0
            last = now
            if quiet >= 2:
                return max(time.perf_counter() - t0 - 0.5, 0.0)
        log(f"WARNING: {m.name} still busy after {timeout:.0f}s")
        return time.perf_counter() - t0

    @staticmethod
    def wait_trash(m: WsfsMount, timeout: float = 600.0) -> float:
        trash = m.data / "trash"
        t0 = time.perf_counter()
        while os.listdir(trash):
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"the trash of {m.data} is not empty after {timeout:.0f}s")
            time.sleep(0.05)
        return time.perf_counter() - t0

    @contextlib.contextmanager
    def server_cpu(self, system: str, sample: dict, prefix: str = ""):
        """CPU the server spent in the block; then how long it stayed busy after it (deferred work)."""
        proc = self.server(system)
        before = proc.cpu_times() if proc else None
        yield
        if proc:
            after = proc.cpu_times()
            backlog = self.wait_idle(self.servers[system])
            later = proc.cpu_times()
            sample[prefix + "server_cpu_s"] = round(after.user + after.system - before.user - before.system, 3)
            sample[prefix + "server_backlog_s"] = round(backlog, 2)
            sample[prefix + "server_backlog_cpu_s"] = round(later.user + later.system - after.user - after.system, 3)

    def add(self, row: str, system: str, value) -> None:
        self.results.setdefault(row, {}).setdefault(system, []).append(value)

    def record(self, workload: str, sample: dict) -> None:
        sample.setdefault("loadavg_1m", os.getloadavg()[0])  # the machine is shared: how busy it was
        self.raw.setdefault(workload, []).append(sample)

    # -- workloads 1 and 2 ------------------------------------------------------------------

    def run_seq(self, selected, runs: int) -> None:
        s = self.sizes
        nbytes, block = s["seq_bytes"], s["block"]
        buf = os.urandom(block)
        for r in range(runs):
            for system in SYSTEMS:
                t = self.target(system, f"w12-r{r}")
                path, backing = t.view / "seq.bin", t.backing / "seq.bin"
                sample = {"run": r, "system": system}
                try:
                    self.settle(system)
                    if 1 in selected:
                        with self.server_cpu(system, sample):
                            t0 = time.perf_counter()
                            write_file(path, nbytes, block, buf=buf)
                            el = time.perf_counter() - t0
                        sample.update(write_s=el, write_mbps=nbytes / el / MB)
                        self.add("1", system, nbytes / el / MB)
                    else:
                        write_file(path, nbytes, block, buf=buf)
                    if 2 in selected:
                        self.settle(system)
                        evict(backing)
                        if path != backing:
                            evict(path)
                        sample["backing_resident_after_evict"] = resident_bytes(backing)
                        with self.server_cpu(system, sample, "cold_"):
                            t0 = time.perf_counter()
                            got = read_file(path, block)
                            el = time.perf_counter() - t0
                        if got != nbytes:
                            raise RuntimeError(f"read {got} bytes of {path}, wrote {nbytes}")
                        sample.update(cold_s=el, cold_mbps=nbytes / el / MB)
                        self.add("2c", system, nbytes / el / MB)
                        with self.server_cpu(system, sample, "hot_"):
                            t0 = time.perf_counter()
                            got = read_file(path, block)
                            el = time.perf_counter() - t0
                        sample.update(hot_s=el, hot_mbps=nbytes / el / MB)
                        self.add("2h", system, nbytes / el / MB)
                    if 1 in selected:  # small writes, as SQLite and most programs make them
                        small = s["small_write_bytes"]
                        self.settle(system)
                        with self.server_cpu(system, sample, "small_"):
                            t0 = time.perf_counter()
                            write_file(t.view / "small.bin", small, 4096, buf=buf[:4096])
                            el = time.perf_counter() - t0
                        sample.update(small_write_s=el, small_write_mbps=small / el / MB)
                        self.add("1s", system, small / el / MB)
                finally:
                    self.drop_target(t)
                self.record("1+2", sample)
                log(f"  w1/2 run {r} {system:6}: " + ", ".join(
                    f"{k}={sample[k]:.0f}" for k in ("write_mbps", "cold_mbps", "hot_mbps", "small_write_mbps")
                    if k in sample))

    # -- workload 3 ---------------------------------------------------------------------------

    def run_small(self, runs: int) -> None:
        n, size = self.sizes["small_files"], self.sizes["small_size"]
        data = b"s" * size
        names = [f"f{i:05d}" for i in range(n)]
        for r in range(runs):
            for system in SYSTEMS:
                t = self.target(system, f"w3-r{r}")
                sample = {"run": r, "system": system}
                try:
                    self.settle(system)
                    with self.server_cpu(system, sample):
                        created, statted, unlinked = small_files(t.view, names, data)
                    sample.update(create_s=created, stat_s=statted, unlink_s=unlinked, create_ops=n / created,
                                  stat_ops=n / statted, unlink_ops=n / unlinked)
                    self.add("3c", system, n / created)
                    self.add("3s", system, n / statted)
                    self.add("3u", system, n / unlinked)
                finally:
                    self.drop_target(t)
                self.record("3", sample)
                log(f"  w3 run {r} {system:6}: create {sample.get('create_ops', 0):.0f}/s, "
                    f"stat {sample.get('stat_ops', 0):.0f}/s, unlink {sample.get('unlink_ops', 0):.0f}/s"
                    + (f" (server busy {sample['server_backlog_s']:.1f}s after)" if "server_backlog_s" in sample else ""))

    # -- workload 4 ---------------------------------------------------------------------------

    def make_tarball(self) -> dict:
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        tar = self.work / "stdlib.tar"
        subprocess.run(["tar", "-cf", str(tar), "--exclude=site-packages", "--exclude=__pycache__",
                        "-C", str(stdlib.parent), stdlib.name], check=True, capture_output=True)
        files = dirs = other = size = 0
        with tarfile.open(tar) as tf:
            for member in tf:
                if member.isfile():
                    files += 1
                    size += member.size
                elif member.isdir():
                    dirs += 1
                else:
                    other += 1
        self.tarball = tar
        info = {"source": str(stdlib), "files": files, "dirs": dirs, "other": other, "file_bytes": size,
                "tar_bytes": tar.stat().st_size, "top": stdlib.name}
        self.notes["stdlib_tarball"] = info
        log(f"stdlib tarball: {files} files, {dirs} dirs, {other} other, {size / MB:.0f} MB of file data")
        return info

    def run_tree(self, runs: int) -> None:
        info = self.make_tarball()
        for r in range(runs):
            for system in SYSTEMS:
                t = self.target(system, f"w4-r{r}")
                sample = {"run": r, "system": system}
                try:
                    self.settle(system)
                    with self.server_cpu(system, sample):
                        untar = run_timed(["tar", "-xf", str(self.tarball), "-C", str(t.view)])
                        t0 = time.perf_counter()
                        res = subprocess.run(["find", str(t.view)], capture_output=True)
                        found = time.perf_counter() - t0
                        if res.returncode != 0:
                            raise RuntimeError(f"find failed: {res.stderr.decode()[-2000:]}")
                        entries = res.stdout.count(b"\n")
                        backing_files = sum(len(f) for _d, _s, f in os.walk(t.backing))
                        removed = run_timed(["rm", "-rf", str(t.view / info["top"])])
                    if backing_files != info["files"] + info["other"]:
                        sample["error"] = f"{backing_files} files in the backing dir, the tarball has {info['files']}"
                    sample.update(untar_s=untar, find_s=found, rm_s=removed, find_entries=entries,
                                  backing_files=backing_files)
                    self.add("4x", system, untar)
                    self.add("4f", system, found)
                    self.add("4r", system, removed)
                finally:
                    self.drop_target(t)
                self.record("4", sample)
                log(f"  w4 run {r} {system:6}: untar {untar:.2f}s, find {found:.2f}s, rm {removed:.2f}s"
                    + (f" (server busy {sample['server_backlog_s']:.1f}s after)" if "server_backlog_s" in sample else ""))

    # -- workload 5 ---------------------------------------------------------------------------

    def run_parallel(self, runs: int) -> None:
        s = self.sizes
        procs, nbytes, block = s["par_procs"], s["par_bytes"], s["block"]
        for r in range(runs):
            for system in SYSTEMS:
                t = self.target(system, f"w5-r{r}")
                sample = {"run": r, "system": system}
                try:
                    self.settle(system)
                    paths = [t.view / f"par-{i}.bin" for i in range(procs)]
                    with self.server_cpu(system, sample):
                        pids, release = spawn_writers(paths, nbytes, block)
                        t0 = time.perf_counter()
                        release()
                        ok = [reap(pid) for pid in pids]
                        el = time.perf_counter() - t0
                    if not all(ok):
                        raise RuntimeError(f"a writer failed on {system} (see stderr)")
                    total = procs * nbytes
                    sample.update(elapsed_s=el, total_mbps=total / el / MB)
                    self.add("5", system, total / el / MB)
                finally:
                    self.drop_target(t)
                self.record("5", sample)
                log(f"  w5 run {r} {system:6}: {sample.get('total_mbps', 0):.0f} MB/s total")

    # -- workload 6 ---------------------------------------------------------------------------

    def prepare_manifest_jobs(self, runs: int) -> None:
        """Jobs w6m-rN with temp/ holding the files AND their manifest entries (before the mount)."""
        from wsfs.core.config import default_config
        from wsfs.core.lifecycle import open_data_dir

        n = self.sizes["temp_files"]
        service = open_data_dir(str(self.wsfs.data), default_config())
        try:
            for r in range(runs):
                job = f"w6m-r{r}"
                service.create_job(job, 0, 0)
                temp = self.wsfs.data / "jobs" / job / "temp"
                make_tree(temp, n)
                # Through the manifest writer, as the mount records files closed after writing:
                # the record's usage and per-area sums come out as a job that wrote them would have.
                for dirpath, _dirs, files in os.walk(temp):
                    for name in files:
                        path = os.path.join(dirpath, name)
                        service.manifest.put(job, os.path.relpath(path, temp.parent), os.lstat(path))
        finally:
            service.close()

    def run_state_completion(self, runs: int, with_manifest: bool) -> None:
        n = self.sizes["temp_files"]
        self.notes["bash_echo_overhead_ms"] = median(
            run_timed(["bash", "-c", "echo completed > /dev/null"]) * 1000 for _ in range(20))
        for r in range(runs):
            for system in [s for s in SYSTEMS if s in ("native", "wsfs", "bindfs")]:
                sample = {"run": r, "system": system, "files": n}
                if system == "wsfs":
                    jobs = [(f"w6-r{r}", "6", False)]
                    if with_manifest:
                        jobs.append((f"w6m-r{r}", "6m", True))
                    for job, row, prepared in jobs:
                        if not prepared:
                            os.mkdir(self.wsfs.mnt / "workspaces" / job)
                            make_tree(self.wsfs.data / "jobs" / job / "temp", n)
                        self.settle(system)
                        state = self.wsfs.mnt / "workspaces" / job / ".state"
                        key = "echo_manifest" if prepared else "echo"
                        with self.server_cpu(system, sample, key + "_"):
                            el = run_timed(["bash", "-c", f"echo completed > '{state}'"])
                        word = state.read_text().strip()
                        if word != "completed":
                            raise RuntimeError(f"{job}: .state says {word!r} after `echo completed`")
                        if not (self.wsfs.mnt / "workspaces" / job / "receipt.json").exists():
                            raise RuntimeError(f"{job}: no receipt.json after completion")
                        drain = self.wait_trash(self.wsfs)
                        sample.update({f"{key}_ms": el * 1000, f"{key}_trash_drain_s": drain})
                        self.add(row, system, el * 1000)
                    log(f"  w6 run {r} wsfs  : echo completed {sample['echo_ms']:.1f} ms"
                        + (f", with manifest {sample['echo_manifest_ms']:.1f} ms" if with_manifest else "")
                        + f" (trash drained in {sample['echo_trash_drain_s']:.1f}s)")
                else:
                    base = self.native_dir if system == "native" else self.bindfs.src
                    make_tree(base / f"w6-r{r}" / "temp", n)
                    view = (base if system == "native" else self.bindfs.mnt) / f"w6-r{r}" / "temp"
                    self.settle(system)
                    with self.server_cpu(system, sample):
                        el = run_timed(["rm", "-rf", str(view)])
                    sample["rm_ms"] = el * 1000
                    self.add("6", system, el * 1000)
                    if with_manifest:
                        self.add("6m", system, el * 1000)
                    shutil.rmtree(base / f"w6-r{r}")
                    log(f"  w6 run {r} {system:6}: rm -rf {el * 1000:.0f} ms")
                self.record("6", sample)

    # -- workload 10: real programs ------------------------------------------------------------

    def prepare_programs(self) -> dict:
        """A git repository of the stdlib tree (outside every mount), and what the rows copy."""
        if self.tarball is None:
            self.make_tarball()
        repo = self.work / "programs-repo"
        repo.mkdir()
        subprocess.run(["tar", "-xf", str(self.tarball), "-C", str(repo)], check=True)
        git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "-C", str(repo)]
        for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "stdlib"]):
            subprocess.run(git + args, check=True)
        files = int(subprocess.run(git + ["ls-files"], check=True, capture_output=True).stdout.count(b"\n"))
        doc = Path("/usr/share/doc")
        info = {"git_files": files, "doc_files": sum(len(f) for _d, _s, f in os.walk(doc))}
        self.notes["programs"] = info
        log(f"w10: a git repository of {files} files; /usr/share/doc has {info['doc_files']} files")
        return {"repo": repo, "doc": doc}

    @staticmethod
    def sqlite_transactions(path: Path, mode: str, count: int = 1000) -> float:
        """``count`` transactions of one small insert each, ``synchronous=full``, in a child process."""
        code = (
            "import sqlite3, sys, time\n"
            "con = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "con.execute(f'pragma journal_mode={sys.argv[2]}')\n"
            "con.execute('pragma synchronous=full')\n"
            "con.execute('create table t (k integer primary key, v blob)')\n"
            "t0 = time.perf_counter()\n"
            "for i in range(int(sys.argv[3])):\n"
            "    con.execute('begin')\n"
            "    con.execute('insert into t (v) values (?)', (b'x' * 100,))\n"
            "    con.execute('commit')\n"
            "print(time.perf_counter() - t0)\n")
        out = subprocess.run([sys.executable, "-c", code, str(path), mode, str(count)], check=True,
                             capture_output=True, text=True)
        return float(out.stdout)

    def run_programs(self, runs: int) -> None:
        src = self.prepare_programs()
        big = self.work / "programs-big.bin"
        write_file(big, 256 * MiB, MiB, fsync=True)
        for r in range(runs):
            for system in SYSTEMS:
                if system == "passthrough_hp" and r:
                    # Fresh each run: its second rsync of a run failed (close: EBADF) once inode numbers
                    # of the first run's deleted files came back (3.17.2; its table keeps backing ids).
                    self.servers[system].stop()
                    self.servers[system].start()
                t = self.target(system, f"w10-r{r}")
                sample: dict = {"run": r, "system": system}
                try:
                    steps = {
                        "10g": lambda: run_timed(["git", "clone", "-q", "--no-hardlinks", str(src["repo"]),
                                                  str(t.view / "clone")]),
                        "10w": lambda: self.sqlite_transactions(t.view / "wal.db", "wal"),
                        "10j": lambda: self.sqlite_transactions(t.view / "rollback.db", "delete"),
                        "10r": lambda: run_timed(["rsync", "-a", f"{src['doc']}/", str(t.view / "doc")]),
                        "10d": lambda: run_timed(["du", "-s", str(t.view / "doc")]),
                        "10l": lambda: run_timed(["ls", "-lR", str(t.view / "doc")]),
                        "10f": lambda: run_timed(["find", str(t.view / "doc"), "-type", "f"]),
                        "10v": lambda: run_timed([sys.executable, "-m", "venv", str(t.view / "venv")]),
                    }
                    for row, step in steps.items():
                        self.settle(system)
                        with self.server_cpu(system, sample, row + "_"):
                            el = step()
                        sample[row + "_s"] = el
                        self.add(row, system, el)
                    shutil.copyfile(big, t.view / "big.bin")
                    self.settle(system)
                    with self.server_cpu(system, sample, "10c_"):
                        el = run_timed(["cp", "--reflink=auto", str(t.view / "big.bin"), str(t.view / "copy.bin")])
                    sample["10c_s"] = el
                    self.add("10c", system, el)
                finally:
                    self.drop_target(t)
                self.record("10", sample)
                log(f"  w10 run {r} {system:14}: " + ", ".join(
                    f"{k[:-2]} {v:.2f}s" for k, v in sample.items() if k.endswith("_s") and not k.endswith("cpu_s")
                    and "backlog" not in k))
        big.unlink()

    # -- workload 11: ending after out-of-order writes ----------------------------------------

    def run_ending(self, runs: int) -> None:
        size = GiB if not self.args.quick else 256 * MiB
        for r in range(runs):
            for system in [s for s in SYSTEMS if s in WSFS_SYSTEMS]:
                m = self.servers[system]
                job = f"w11-r{r}"
                os.mkdir(m.mnt / "workspaces" / job)
                path = m.mnt / "workspaces" / job / "output" / "out.bin"
                block = os.urandom(MiB)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
                try:
                    os.posix_fallocate(fd, 0, size)
                    for offset in range(size - MiB, -1, -MiB):
                        os.pwrite(fd, block, offset)
                finally:
                    os.close(fd)
                time.sleep(3.0)  # "long ago": the hasher had its chance
                self.settle(system)
                sample = {"run": r, "system": system, "bytes": size}
                with self.server_cpu(system, sample):
                    el = run_timed(["bash", "-c", f"echo completed > '{path.parent.parent / '.state'}'"])
                sample["ending_ms"] = el * 1000
                self.add("11", system, el * 1000)
                self.record("11", sample)
                log(f"  w11 run {r} {system:14}: echo completed {el * 1000:.1f} ms")

    # -- workload 7 ---------------------------------------------------------------------------

    def run_state_latency(self, runs: int) -> None:
        s = self.sizes
        need = s["state_reads"]

        def read_state(path) -> tuple[float, bytes]:
            t0 = time.perf_counter()
            fd = os.open(path, os.O_RDONLY)
            data = os.read(fd, 64)
            os.close(fd)
            return time.perf_counter() - t0, data

        for r in range(runs):
            job = f"w7-r{r}"
            os.mkdir(self.wsfs.mnt / "workspaces" / job)
            out = self.wsfs.mnt / "workspaces" / job / "output"
            state = self.wsfs.mnt / "workspaces" / job / ".state"
            self.settle("wsfs")
            idle = []
            for _ in range(need):
                el, _data = read_state(state)
                idle.append(el * 1000)
                time.sleep(0.001)
            samples: list[float] = []
            batches = 0
            while len(samples) < need:
                paths = [out / f"par-{batches}-{i}.bin" for i in range(s["par_procs"])]
                pids, release = spawn_writers(paths, s["par_bytes"], s["block"])
                release()
                batches += 1
                alive = set(pids)
                failed = False
                while alive:
                    el, data = read_state(state)
                    if data != b"running\n":
                        raise RuntimeError(f".state read {data!r} under load")
                    samples.append(el * 1000)
                    time.sleep(0.001)
                    for pid in list(alive):
                        ok = reap(pid, block=False)
                        if ok is not None:
                            alive.discard(pid)
                            failed |= not ok
                if failed:
                    raise RuntimeError("a writer failed during workload 7")
                for p in paths:
                    os.unlink(p)
            sample = {"run": r, "system": "wsfs", "reads": len(samples), "writer_batches": batches,
                      "p50_ms": percentile(samples, 50), "p90_ms": percentile(samples, 90),
                      "p99_ms": percentile(samples, 99), "max_ms": max(samples),
                      "idle_p50_ms": percentile(idle, 50), "idle_p99_ms": percentile(idle, 99),
                      "samples_ms": [round(x, 4) for x in samples]}
            self.add("7a", "wsfs", sample["p50_ms"])
            self.add("7b", "wsfs", sample["p99_ms"])
            self.record("7", sample)
            log(f"  w7 run {r}: {len(samples)} reads under load: p50 {sample['p50_ms']:.2f} ms, "
                f"p99 {sample['p99_ms']:.2f} ms, max {sample['max_ms']:.1f} ms (idle p99 {sample['idle_p99_ms']:.2f} ms)")
            self.settle("wsfs")

    # -- workloads 8 and 9: populated data dirs ---------------------------------------------

    def run_sweep(self, runs: int) -> None:
        from wsfs.core.retention import Sweeper

        s = self.sizes
        base = self.work / "sweep"
        base.mkdir(exist_ok=True)
        t_sweep = 1_800_000_000.0
        bases = {}
        for mode in ("hide", "purge"):
            path = base / f"base-{mode}"
            t0 = time.perf_counter()
            populate(path, jobs=s["sweep_jobs"], due=s["sweep_due"], due_mode=mode, t_sweep=t_sweep)
            took = time.perf_counter() - t0
            size = sum(f.stat().st_size for f in (path / "store").iterdir())
            log(f"  w8: populated {human_count(s['sweep_jobs'])} records ({s['sweep_due']} due to {mode}) "
                f"in {took:.1f}s, store {size / MB:.0f} MB")
            self.notes[f"sweep_base_{mode}"] = {"populate_s": round(took, 1), "store_bytes": size}
            bases[mode] = path
        for r in range(runs):
            sample = {"run": r}
            for mode in ("hide", "purge"):
                copy = base / f"copy-{mode}-{r}"
                subprocess.run(["cp", "-a", "--sparse=always", str(bases[mode]), str(copy)], check=True)
                os.sync()
                service, close = open_core(copy, t_sweep)
                try:
                    sweeper = Sweeper(service)
                    t0 = time.perf_counter()
                    report = sweeper.sweep(t_sweep)
                    el = (time.perf_counter() - t0) * 1000
                    counts = report.as_dict()["counts"]
                    errors = [a.error for a in report.actions if a.error]
                    want = {"hide": "hide", "purge": "purge"}[mode]
                    if counts.get(want) != s["sweep_due"] or errors:
                        raise RuntimeError(f"sweep ({mode}) did {counts}, errors {errors[:3]}")
                    sample[f"{mode}_ms"] = el
                    self.add("8h" if mode == "hide" else "8p", "wsfs", el)
                    if mode == "hide":
                        nones = []
                        for _ in range(s["sweep_none_reps"]):
                            t0 = time.perf_counter()
                            report = sweeper.sweep(t_sweep, announce=False)
                            nones.append((time.perf_counter() - t0) * 1000)
                            if report.actions:
                                raise RuntimeError(f"a second sweep found work: {report.as_dict()['counts']}")
                        sample["none_ms_samples"] = nones
                        sample["none_ms"] = median(nones)
                        self.add("8n", "wsfs", sample["none_ms"])
                finally:
                    close()
                    shutil.rmtree(copy)
            self.record("8", sample)
            log(f"  w8 run {r}: hide {sample['hide_ms']:.0f} ms, purge {sample['purge_ms']:.0f} ms, "
                f"none due {sample['none_ms']:.2f} ms")
        shutil.rmtree(base)

    def run_rss(self, runs: int) -> None:
        s = self.sizes
        data = self.work / "rss-data"
        t0 = time.perf_counter()
        populate(data, jobs=s["rss_jobs"], due=0, due_mode=None, t_sweep=time.time(), entries=s["rss_entries"],
                 trees="all", running=max(1, s["rss_jobs"] // 100))
        took = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in (data / "store").iterdir())
        log(f"  w9: populated {human_count(s['rss_jobs'])} jobs, {human_count(s['rss_entries'])} manifest entries "
            f"in {took:.1f}s, store {size / MB:.0f} MB")
        self.notes["rss_data"] = {"populate_s": round(took, 1), "store_bytes": size}
        m = WsfsMount(self.work / "rss-mnt", data, self.work / "rss-daemon.log")
        self.extra_daemons.append(m)
        for r in range(runs):
            sample = {"run": r}
            t0 = time.perf_counter()
            m.start()
            try:
                sample["mount_s"] = time.perf_counter() - t0
                proc = psutil.Process(m.pid)
                time.sleep(1.0)
                sample["rss_idle_mib"] = proc.memory_info().rss / MiB
                steps = {}
                t0 = time.perf_counter()
                names = os.listdir(m.mnt / "workspaces")
                steps["ls_workspaces_s"] = time.perf_counter() - t0
                sample["jobs_listed"] = len(names)
                t0 = time.perf_counter()
                json.loads((m.mnt / ".wsfs" / "status").read_text())
                steps["status_s"] = time.perf_counter() - t0
                picks = [names[i] for i in range(0, len(names), max(1, len(names) // 5))][:5]
                t0 = time.perf_counter()
                for job in picks:
                    for f in (".job", ".manifest", ".state"):
                        subprocess.run(["cat", str(m.mnt / "workspaces" / job / f)], check=True,
                                       stdout=subprocess.DEVNULL)
                steps["cat_job_files_s"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                subprocess.run(["cat", str(m.mnt / ".wsfs" / "events")], check=True, stdout=subprocess.DEVNULL)
                steps["events_s"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                out = subprocess.run(["cat", str(m.mnt / ".wsfs" / "jobs")], check=True, stdout=subprocess.PIPE)
                steps["wsfs_jobs_s"] = time.perf_counter() - t0
                sample["wsfs_jobs_lines"] = out.stdout.count(b"\n")
                del out
                t0 = time.perf_counter()
                os.listdir(m.mnt / "workspaces")
                steps["ls_workspaces_again_s"] = time.perf_counter() - t0
                time.sleep(1.0)
                mem = proc.memory_info()
                status = read_proc_status(m.pid)
                sample.update(steps)
                sample.update(rss_mib=mem.rss / MiB, hwm_mib=status.get("VmHWM", 0) / 1024,
                              rss_anon_mib=status.get("RssAnon", 0) / 1024,
                              rss_file_mib=status.get("RssFile", 0) / 1024, threads=proc.num_threads())
                self.add("9", "wsfs", sample["rss_mib"])
            finally:
                m.stop()
            self.record("9", sample)
            log(f"  w9 run {r}: RSS {sample['rss_mib']:.0f} MiB (anon {sample['rss_anon_mib']:.0f}, file "
                f"{sample['rss_file_mib']:.0f}, peak {sample['hwm_mib']:.0f}; idle {sample['rss_idle_mib']:.0f}); "
                f"ls workspaces/ {sample['ls_workspaces_s']:.2f}s for {sample['jobs_listed']} jobs, "
                f".wsfs/jobs {sample['wsfs_jobs_s']:.2f}s")
        errors = m.errors()
        if errors:
            self.daemon_errors["rss-daemon"] = errors[:50]
        shutil.rmtree(data)


def read_proc_status(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            parts = value.split()
            if parts and parts[0].isdigit():
                out[key] = int(parts[0])
    return out


class FakeClock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def open_core(data_dir: Path, now: float):
    from wsfs.core.config import default_config
    from wsfs.core.lifecycle import JobService
    from wsfs.core.store import Store
    from wsfs.core.tree import Tree

    clock = FakeClock(now)
    tree = Tree(str(data_dir))
    store = Store(str(data_dir / "store"), clock=clock)
    service = JobService(store, tree, default_config(), clock=clock)

    def close():
        service.manifest.flush()
        store.close()
        tree.close()
    return service, close


def populate(data_dir: Path, *, jobs: int, due: int, due_mode: str | None, t_sweep: float, entries: int = 0,
             trees: str = "due", running: int = 0, batch: int = 5000) -> None:
    """Write ``jobs`` records straight into a fresh store (``Writer.put_job``), no FUSE, no per-job commit.

    Ended jobs are ``failed`` (sealed, with an expiry); ``due`` of them, spread
    evenly, expire before ``t_sweep`` (``due_mode`` "hide": visible ones past
    their retention; "purge": hidden ones past their grace), the others in the
    next 7 days.  ``running`` jobs (the first ones) have no expiry.  Trees
    (DATA/jobs/ID/AREA) are made for the due jobs (``trees="due"``) or all.
    ``entries`` manifest entries are spread evenly over the jobs, with the
    records' usage to match.
    """
    service, close = open_core(data_dir, t_sweep)
    store, tree = service.store, service.tree
    tmpl = service.config.template("default")
    step = jobs // due if due else 0
    due_set = {i * step for i in range(due)} if due else set()
    per_job, extra = divmod(entries, jobs) if entries else (0, 0)
    try:
        for start in range(0, jobs, batch):
            records, manifest = [], []
            for i in range(start, min(jobs, start + batch)):
                job = f"job-{i:07d}"
                created = t_sweep - 30 * 86400 + i * (20 * 86400 / jobs)
                record = service.new_record(job, tmpl, 0, 0, created, None, None)
                n_entries = per_job + (1 if i < extra else 0)
                sealed = i >= running
                files = []
                for k in range(n_entries):
                    size = 4096 + (i * 7919 + k * 104729) % (8 * MiB)
                    sha = (i * 1_000_003 + k).to_bytes(8, "big") * 4 if sealed else None
                    files.append((f"output/part-{k:05d}.bin", [size, int(created * 1e9), 1_000_000 + i * 64 + k, sha]))
                record.usage = {"bytes": sum(f[1][0] for f in files), "files": len(files)}
                if sealed:
                    ended = created + 3600
                    record.update(state="failed", state_since=ended, ended=ended, sealed=True, reason="bench")
                    record.history.append({"state": "failed", "at": ended, "reason": "bench"})
                    if i in due_set:
                        record.expires_at = t_sweep - 1 - (i % 3600)
                        if due_mode == "purge":
                            record.hidden = True
                    else:
                        record.expires_at = t_sweep + 60 + (i * 6048.0) % (7 * 86400)
                records.append(record)
                manifest.extend((job, p, e) for p, e in files)
                if trees == "all" or (trees == "due" and i in due_set):
                    tree.mkdir("jobs", job, 0o755)
                    for area in record.areas:
                        tree.mkdir("jobs", f"{job}/{area}", 0o755)

            def fn(w, records=records, manifest=manifest):
                for record in records:
                    w.put_job(record)
                for job, path, entry in manifest:
                    w.put_manifest(job, path, entry)
            store.transact(fn)
    finally:
        close()


# -- the table ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    key: str
    workload: int
    label: str
    unit: str
    kind: str                          # rate (higher is better) | time | mem (lower is better)
    native_min: float | None = None    # speed ratio wsfs/native at least this
    bindfs_min: float | None = None    # speed ratio wsfs/bindfs at least this
    hp_min: float | None = None        # speed ratio wsfs/passthrough_hp at least this
    max_value: float | None = None     # wsfs value at most this
    target: str = ""
    decimals: int = 1


def rows_for(s: dict) -> list[Row]:
    seq = human_bytes(s["seq_bytes"])
    nf = human_count(s["small_files"])
    tf = human_count(s["temp_files"])
    sj, sd = human_count(s["sweep_jobs"]), human_count(s["sweep_due"])
    return [
        # issue 16, goal 1: streaming at native speed (kernel passthrough)
        Row("1", 1, f"seq write {seq}, 1 MiB blocks, fsync", "MB/s", "rate", 0.90, 1.0, target="≥0.90×native", decimals=0),
        Row("1s", 1, f"{human_bytes(s['small_write_bytes'])} in 4 KiB writes, fsync", "MB/s", "rate", 0.90, 1.0,
            target="≥0.90×native", decimals=0),
        Row("2c", 2, f"seq read {seq}, cold", "MB/s", "rate", 0.90, 1.0, target="≥0.90×native", decimals=0),
        Row("2h", 2, f"seq read {seq}, hot", "MB/s", "rate", 0.90, 1.0, target="≥0.90×native", decimals=0),
        # goal 2: metadata at or above the C low-level reference
        Row("3c", 3, f"{nf} × 4 KiB: create+write+close", "ops/s", "rate", None, 1.0, 1.0, target="", decimals=0),
        Row("3s", 3, f"{nf} × 4 KiB: stat", "ops/s", "rate", None, 1.0, 1.0, target="", decimals=0),
        Row("3u", 3, f"{nf} × 4 KiB: unlink", "ops/s", "rate", None, 1.0, 1.0, target="", decimals=0),
        Row("4x", 4, "stdlib tree: tar -xf", "s", "time", None, 1.0, 1.0, target="", decimals=2),
        Row("4f", 4, "stdlib tree: find", "s", "time", None, 1.0, 1.0, target="", decimals=3),
        Row("4r", 4, "stdlib tree: rm -rf", "s", "time", None, 1.0, 1.0, target="", decimals=2),
        Row("5", 5, f"{s['par_procs']} procs × {human_bytes(s['par_bytes'])} parallel write", "MB/s", "rate",
            0.80, 1.0, target="≥0.80×native", decimals=0),
        Row("6", 6, f"echo completed, {tf} temp files (vs rm -rf)", "ms", "time", 50.0, 1.0, max_value=50.0,
            target="≤50 ms, ≤2% of rm (≥50×)", decimals=1),
        Row("6m", 6, "  same, files in the manifest", "ms", "time", 50.0, 1.0, max_value=50.0,
            target="≤50 ms, ≤2% of rm (≥50×)", decimals=1),
        Row("7a", 7, ".state open/read/close under w5, p50", "ms", "time", decimals=2),
        Row("7b", 7, ".state open/read/close under w5, p99", "ms", "time", max_value=10.0, target="≤10 ms", decimals=2),
        Row("8h", 8, f"sweep {sj} jobs, {sd} due (hide)", "ms", "time", max_value=500.0, target="≤500 ms", decimals=0),
        Row("8p", 8, f"sweep {sj} jobs, {sd} due (purge)", "ms", "time", max_value=500.0, target="≤500 ms", decimals=0),
        Row("8n", 8, f"sweep {sj} jobs, none due", "ms", "time", max_value=5.0, target="≤5 ms", decimals=2),
        Row("9", 9, f"daemon RSS, {human_count(s['rss_jobs'])} jobs, {human_count(s['rss_entries'])} entries",
            "MiB", "mem", max_value=150.0, target="≤150 MiB", decimals=0),
        # goal 3: real programs
        Row("10g", 10, "git clone, stdlib repository", "s", "time", 0.5, target="≤2×native", decimals=2),
        Row("10w", 10, "SQLite 1,000 transactions, WAL", "s", "time", 0.5, target="≤2×native", decimals=2),
        Row("10j", 10, "SQLite 1,000 transactions, rollback", "s", "time", 0.5, target="≤2×native", decimals=2),
        Row("10r", 10, "rsync -a /usr/share/doc in", "s", "time", 1 / 3, target="≤3×native", decimals=2),
        Row("10d", 10, "  du -s of it", "s", "time", 1 / 3, target="≤3×native", decimals=3),
        Row("10l", 10, "  ls -lR of it", "s", "time", 1 / 3, target="≤3×native", decimals=3),
        Row("10f", 10, "  find -type f of it", "s", "time", 1 / 3, target="≤3×native", decimals=3),
        Row("10c", 10, "cp --reflink=auto 256 MiB in a job", "s", "time", 0.8, target="~1×native", decimals=3),
        Row("10v", 10, "python -m venv", "s", "time", 1 / 1.5, target="≤1.5×native", decimals=2),
        # goal 4: endings stay O(1)
        Row("11", 11, "echo completed after 1 GiB written out of order", "ms", "time", max_value=50.0,
            target="≤50 ms", decimals=1),
    ]


def speed_ratio(row: Row, wsfs: float | None, other: float | None) -> float | None:
    if wsfs is None or other is None or wsfs <= 0 or other <= 0:
        return None
    return wsfs / other if row.kind == "rate" else other / wsfs


def fmt(v, decimals: int) -> str:
    if v is None:
        return "–"
    return f"{v:,.{decimals}f}"


def build_table(rows: list[Row], results: dict) -> tuple[list[dict], str]:
    out = []
    for row in rows:
        vals = results.get(row.key)
        if not vals:
            continue
        med = {s: median(vals.get(s, [])) for s in ALL_SYSTEMS}
        rn = speed_ratio(row, med["wsfs"], med["native"])
        rh = speed_ratio(row, med["wsfs"], med["passthrough_hp"])
        rb = speed_ratio(row, med["wsfs"], med["bindfs"])
        checks = []
        if row.native_min is not None and rn is not None:
            checks.append(rn >= row.native_min)
        if row.hp_min is not None and rh is not None:
            checks.append(rh >= row.hp_min)
        if row.bindfs_min is not None and rb is not None:
            checks.append(rb >= row.bindfs_min)
        if row.max_value is not None and med["wsfs"] is not None:
            checks.append(med["wsfs"] <= row.max_value)
        target = row.target
        if row.hp_min is not None and med["passthrough_hp"] is not None:
            target += ", ≥1×passthrough_hp"
        if row.bindfs_min is not None and med["bindfs"] is not None:
            target += ", ≥1×bindfs"
        out.append({"row": row.key, "workload": row.workload, "label": row.label, "unit": row.unit,
                    "median": med, "runs": {s: len(vals.get(s, [])) for s in ALL_SYSTEMS},
                    "wsfs_vs_native": rn, "wsfs_vs_passthrough_hp": rh, "wsfs_vs_bindfs": rb,
                    "wsfs_served_vs_native": speed_ratio(row, med["wsfs-served"], med["native"]),
                    "target": target.strip(", "), "ok": all(checks) if checks else None, "decimals": row.decimals})
    shown = [s for s in ALL_SYSTEMS if any(r["median"][s] is not None for r in out)]
    ratios = [(key, title) for key, title, system in (
        ("wsfs_vs_native", "wsfs/native", "native"), ("wsfs_served_vs_native", "served/native", "wsfs-served"),
        ("wsfs_vs_passthrough_hp", "wsfs/hp", "passthrough_hp"), ("wsfs_vs_bindfs", "wsfs/bindfs", "bindfs"))
        if system in shown]
    names = {"wsfs-served": "served", "passthrough_hp": "hp"}
    header = ["workload", "unit", *[names.get(s, s) for s in shown], *[t for _k, t in ratios], "target", "ok"]
    lines = [header]
    for r in out:
        d = r["decimals"]
        lines.append([f"{r['row']:<3} {r['label']}", r["unit"], *[fmt(r["median"][s], d) for s in shown],
                      *["–" if r[k] is None else f"{r[k]:.2f}×" for k, _t in ratios],
                      r["target"] or "–", {True: "✓", False: "✗", None: "·"}[r["ok"]]])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    right = set(range(2, 2 + len(shown) + len(ratios)))
    text = []
    for n, line in enumerate(lines):
        cells = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(line)]
        text.append("  ".join(cells).rstrip())
        if n == 0:
            text.append("  ".join("-" * w for w in widths))
    return out, "\n".join(text)


# -- profiling -------------------------------------------------------------------------------------------


def py_spy() -> str:
    for cand in (Path(sys.executable).parent / "py-spy", shutil.which("py-spy")):
        if cand and os.access(cand, os.X_OK):
            return str(cand)
    raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")


WAIT_FUNCTIONS = ("Condition.wait", "Event.wait", "Thread.join", "Lock.acquire")


def aggregate_raw(path: Path, top: int = 20) -> dict:
    """Shares of the daemon's busy samples, from py-spy's raw (collapsed) output with --threads.

    Samples whose innermost frame is a wait (``Condition.wait`` ...: py-spy
    counts timed waits as active) are counted apart, as ``waiting``, and left
    out of the shares.  Threads without a Python name are libfuse's workers.
    """
    total = busy = 0
    by_thread: dict[str, int] = {}
    self_fn: dict[str, int] = {}
    self_line: dict[str, int] = {}
    incl_fn: dict[str, int] = {}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        thread = "?"
        if frames and frames[0].startswith(("thread ", "process ")):
            thread = frames[0].split(": ", 1)[1] if ": " in frames[0] else "FUSE worker threads"
            frames = frames[1:]
        if not frames or frames[-1].split(" (")[0] in WAIT_FUNCTIONS:
            continue
        busy += n
        by_thread[thread] = by_thread.get(thread, 0) + n
        leaf = frames[-1]
        self_line[_short_frame(leaf)] = self_line.get(_short_frame(leaf), 0) + n
        fn = _fn_of(leaf)
        self_fn[fn] = self_fn.get(fn, 0) + n
        for f in {_fn_of(fr) for fr in frames}:
            incl_fn[f] = incl_fn.get(f, 0) + n

    def share(d):
        return [(k, round(100 * v / busy, 1)) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]
    return {"samples": total, "busy_samples": busy, "threads": share(by_thread), "self_functions": share(self_fn),
            "self_lines": share(self_line), "inclusive_functions": share(incl_fn)}


def _short_frame(frame: str) -> str:
    name, sep, where = frame.partition(" (")
    return f"{name} ({_short(where.rstrip(')'))})" if sep else frame


def _fn_of(frame: str) -> str:
    """``name (file.py:12)`` -> ``name (file.py)``."""
    name, sep, where = frame.partition(" (")
    if not sep:
        return frame
    file = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({_short(file)})"


def _short(file: str) -> str:
    for marker in ("/wsfs/", "/site-packages/", "/lib/python3"):
        if marker in file:
            return file[file.index(marker) + 1:]
    return file


def run_profile(bench: Bench, workloads: list[int], seconds: int, native: bool) -> dict:
    spy = py_spy()
    profiles = {}
    s = bench.sizes
    for w in workloads:
        out = Path(f"/tmp/wsfs-profile-{w}.txt")
        args = [spy, "record", "--pid", str(bench.wsfs.pid), "--duration", str(seconds), "--format", "raw",
                "--output", str(out), "--threads", "--rate", "200", "--nonblocking"]
        if native:
            args.append("--native")
        bench.settle("wsfs")
        proc = psutil.Process(bench.wsfs.pid)
        cpu0 = proc.cpu_times()
        spy_log = open(f"/tmp/wsfs-profile-{w}.log", "wb")
        spy_proc = subprocess.Popen(args, stdout=spy_log, stderr=subprocess.STDOUT)
        time.sleep(1.0)
        loops = 0
        t_start = time.perf_counter()
        try:
            while spy_proc.poll() is None:
                t = bench.target("wsfs", f"prof{w}-{loops}")
                try:
                    if w in (1, 2):
                        write_file(t.view / "seq.bin", s["seq_bytes"], s["block"])
                        if w == 2:
                            read_file(t.view / "seq.bin", s["block"])
                    elif w == 3:
                        dfd = os.open(t.view, os.O_RDONLY | os.O_DIRECTORY)
                        names = [f"f{i:05d}" for i in range(s["small_files"])]
                        for name in names:
                            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dfd)
                            os.write(fd, b"s" * s["small_size"])
                            os.close(fd)
                        for name in names:
                            os.stat(name, dir_fd=dfd)
                        for name in names:
                            os.unlink(name, dir_fd=dfd)
                        os.close(dfd)
                    elif w == 4:
                        if bench.tarball is None:
                            bench.make_tarball()
                        run_timed(["tar", "-xf", str(bench.tarball), "-C", str(t.view)])
                        subprocess.run(["find", str(t.view)], stdout=subprocess.DEVNULL, check=True)
                        run_timed(["rm", "-rf", str(t.view / bench.notes["stdlib_tarball"]["top"])])
                    elif w == 5:
                        pids, release = spawn_writers([t.view / f"p{i}" for i in range(s["par_procs"])],
                                                      s["par_bytes"], s["block"])
                        release()
                        for pid in pids:
                            reap(pid)
                    else:
                        raise SystemExit(f"--profile knows workloads 1-5, not {w}")
                finally:
                    bench.drop_target(t)
                loops += 1
        finally:
            spy_proc.wait()
            spy_log.close()
        cpu1 = proc.cpu_times()
        wall = time.perf_counter() - t_start
        if not out.exists():
            raise RuntimeError(f"py-spy wrote nothing; see /tmp/wsfs-profile-{w}.log")
        summary = aggregate_raw(out)
        summary.update(workload=w, loops=loops, wall_s=round(wall, 1), raw=str(out),
                       daemon_cpu_user_s=round(cpu1.user - cpu0.user, 2),
                       daemon_cpu_sys_s=round(cpu1.system - cpu0.system, 2))
        profiles[str(w)] = summary
        print_profile(summary)
    return profiles


def print_profile(p: dict) -> None:
    print(f"\n== profile of workload {p['workload']}: {p['busy_samples']} busy of {p['samples']} samples "
          f"(shares below are of the busy ones), {p['loops']} loops in {p['wall_s']}s; "
          f"daemon CPU user {p['daemon_cpu_user_s']}s sys {p['daemon_cpu_sys_s']}s (raw: {p['raw']})")
    for title, key in (("busy samples by thread", "threads"), ("self time by function", "self_functions"),
                       ("self time by line", "self_lines"), ("inclusive by function", "inclusive_functions")):
        print(f"  -- {title} (% of samples)")
        for name, pct in p[key][:15]:
            print(f"  {pct:5.1f}%  {name}")


# -- main -------------------------------------------------------------------------------------------------


def parse_only(text: str | None) -> list[int]:
    if not text:
        return list(range(1, 12))
    out = sorted({int(x) for x in text.replace(" ", "").split(",") if x})
    bad = [w for w in out if not 1 <= w <= 11]
    if bad:
        raise SystemExit(f"--only: no workload {bad}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes and 3 runs (a smoke run)")
    ap.add_argument("--runs", type=int, default=None, help="runs per workload (default 5, quick 3)")
    ap.add_argument("--only", default=None, help="comma-separated workloads, e.g. 1,3")
    ap.add_argument("--json", default=str(REPO / "bench" / "results.json"), help="where to write the results")
    ap.add_argument("--dir", default="/var/tmp/wsfs-bench", help="work dir (on the filesystem to measure)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir afterwards")
    ap.add_argument("--src", default=str(REPO),
                    help="the source tree whose wsfs/ is measured (default: this repo; e.g. a `git archive` of a commit)")
    ap.add_argument("--profile", default=None, metavar="W,..",
                    help="instead of the bench: py-spy the wsfs daemon while workloads (1-5) loop")
    ap.add_argument("--profile-seconds", type=int, default=20)
    ap.add_argument("--profile-native", action="store_true", help="py-spy --native (C frames too)")
    args = ap.parse_args(argv)

    global SRC
    SRC = Path(args.src).resolve()
    if not (SRC / "wsfs" / "__init__.py").exists():
        raise SystemExit(f"--src {SRC}: no wsfs package there")
    sys.path.insert(0, str(SRC))
    sizes = dict(QUICK if args.quick else FULL)
    runs = args.runs or sizes["runs"]
    if runs < 1:
        raise SystemExit("--runs must be at least 1")
    selected = parse_only(args.profile if args.profile else args.only)
    if os.geteuid() != 0:
        log("note: not root; bindfs and wsfs mount as this user")

    def on_term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    bench = Bench(args, sizes)
    started = time.time()
    machine = None
    status = 1
    try:
        bench.prepare_workdir()
        machine = machine_info(bench.work)
        log("machine: " + machine_line(machine))
        if args.profile:
            bench.wsfs.start()
            profiles = run_profile(bench, selected, args.profile_seconds, args.profile_native)
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            out = Path(args.json)
            out.write_text(json.dumps({"machine": machine, "profiles": profiles, "sizes": sizes}, indent=1))
            log(f"profiles written to {out}")
            status = 0
            return 0
        log(f"{'QUICK' if args.quick else 'FULL'} run: workloads {selected}, {runs} runs each, work dir {bench.work}")
        if 6 in selected:
            log("w6: preparing the jobs whose temp files are in the manifest")
            bench.prepare_manifest_jobs(runs)
        bench.mount_all(selected)
        timings = {}

        failed: list[str] = []

        def phase(name, fn, *a):
            """One workload; one that fails is reported, and the others still run and are tabled."""
            t0 = time.perf_counter()
            log(f"workload {name}")
            try:
                fn(*a)
            except Exception:  # noqa: BLE001 - the run goes on; the failure is printed and makes the exit 1
                log(f"workload {name} FAILED:\n{traceback.format_exc()}")
                failed.append(name)
            timings[name] = round(time.perf_counter() - t0, 1)

        if 1 in selected or 2 in selected:
            phase("1+2", bench.run_seq, selected, runs)
        if 3 in selected:
            phase("3", bench.run_small, runs)
        if 4 in selected:
            phase("4", bench.run_tree, runs)
        if 5 in selected:
            phase("5", bench.run_parallel, runs)
        if 6 in selected:
            phase("6", bench.run_state_completion, runs, True)
        if 7 in selected:
            phase("7", bench.run_state_latency, runs)
        if 8 in selected:
            phase("8", bench.run_sweep, runs)
        if 9 in selected:
            phase("9", bench.run_rss, runs)
        if 10 in selected:
            phase("10", bench.run_programs, runs)
        if 11 in selected:
            phase("11", bench.run_ending, runs)
        for name in WSFS_SYSTEMS:
            errors = bench.servers[name].errors()  # type: ignore[attr-defined]
            if errors:
                bench.daemon_errors[name] = errors[:50]
        rows, text = build_table(rows_for(sizes), bench.results)
        duration = time.time() - started
        print()
        print(f"wsfs bench ({'QUICK: sizes reduced, targets indicative' if args.quick else 'full'}; median of {runs} "
              f"runs; ratios are speed ratios, >1 = wsfs faster) — {datetime.datetime.now():%Y-%m-%d %H:%M}")
        print(text)
        print()
        print("machine: " + machine_line(machine))
        if "wsfs_fuse" in bench.notes:
            fuse = bench.notes["wsfs_fuse"]
            print(f"wsfs: libfuse {fuse.get('libfuse')}, kernel passthrough {fuse.get('passthrough')}, readdirplus "
                  f"{'on' if fuse.get('readdirplus') else 'off'}; served: the same wsfs with WSFS_PASSTHROUGH=0; "
                  f"hp: libfuse's passthrough_hp (C++, low-level API) from the same libfuse build")
        if "stdlib_tarball" in bench.notes:
            tb = bench.notes["stdlib_tarball"]
            print(f"w4 tree: {tb['source']} as a tarball: {tb['files']} files, {tb['dirs']} dirs, "
                  f"{tb['file_bytes'] / MB:.0f} MB of file data")
        if "bash_echo_overhead_ms" in bench.notes:
            print(f"w6: timed around `bash -c 'echo completed > .state'` (bash start-up included: "
                  f"{bench.notes['bash_echo_overhead_ms']:.1f} ms for `echo > /dev/null`); native and bindfs: "
                  f"`rm -rf` of the same tree; 7: open/read/close timed in-process (Python)")
        if bench.daemon_errors:
            print("DAEMON ERRORS:")
            for name, lines in bench.daemon_errors.items():
                for ln in lines[:20]:
                    print(f"  {name}: {ln}")
        print(f"took {duration / 60:.1f} min")
        doc = {"machine": machine, "machine_line": machine_line(machine), "quick": args.quick, "runs": runs,
               "sizes": sizes, "selected": selected, "started": datetime.datetime.fromtimestamp(started).isoformat(),
               "duration_s": round(duration, 1), "phase_s": timings, "table": rows, "table_text": text,
               "samples": bench.results, "raw": bench.raw, "notes": bench.notes, "daemon_errors": bench.daemon_errors,
               "loadavg_at_end": os.getloadavg()}
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1, default=str))
        log(f"results written to {out}")
        if failed:
            log(f"workloads that failed: {', '.join(failed)} (their rows are partial or missing)")
            return 1
        status = 0
        return 0
    finally:
        bench.cleanup()
        left = mounts_under(bench.work)
        if left:
            log(f"WARNING: mounts left: {left}")
        if status:
            for m in (bench.wsfs, *bench.extra_daemons):
                errs = m.errors()
                if errs:
                    log(f"{m.name} log ({m.log_path}) errors: " + " | ".join(errs[:10]))


if __name__ == "__main__":
    sys.exit(main())
