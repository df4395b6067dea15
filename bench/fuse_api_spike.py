#!/usr/bin/env python3
"""Which Python FUSE API for wsfs (issue 16, goal 2): the same naive loopback written twice, once on
mfusepy's high-level path API (threads, what wsfs uses) and once on pyfuse3's low-level inode API
(one thread, trio), measured side by side with wsfs, libfuse's passthrough_hp (C++, low level) and
the bare disk, on the metadata workload of ``bench/run.py`` 3: create+write+close, stat and unlink of
N files of 4 KiB in one directory.

    .venv/bin/python bench/fuse_api_spike.py [--files 10000] [--runs 5]

pyfuse3 is not a dependency of wsfs: the spike installs it (and trio) into a throwaway virtualenv
(``--spike-venv``, default /var/tmp/wsfs-spike-venv; it needs Debian's libfuse3-dev and
pkg-config, which it installs with apt when missing).  Both loopbacks have the same entry and
attribute timeouts as wsfs (10 s) and answer the same calls; neither keeps a manifest, a quota or
a hash: what they measure is the cost of a request in each API, the floor below wsfs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from mounted import REPO
from run import small_files

HP = Path(sys.prefix) / "lib" / "wsfs-libfuse" / "passthrough_hp"

MFUSEPY_LOOP = textwrap.dedent('''
    import errno, os, sys
    sys.path.insert(0, sys.argv[3])
    from wsfs.fuse import binding  # the same libfuse and mfusepy as wsfs
    mfusepy = binding.mfusepy

    class Loop(mfusepy.Operations):
        use_ns = True

        def __init__(self, src):
            self.src = src

        def _p(self, path):
            return self.src + path

        def init_with_config(self, conn, config):
            if config is not None:
                config.use_ino, config.nullpath_ok = 1, 1
                config.entry_timeout = config.attr_timeout = 10.0

        def getattr(self, path, fh=None):
            st = os.fstat(fh.fh) if fh is not None and fh.fh else os.lstat(self._p(path))
            return {k: getattr(st, k) for k in ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size")} | {
                "st_atime": st.st_atime_ns, "st_mtime": st.st_mtime_ns, "st_ctime": st.st_ctime_ns}

        def create(self, path, mode, fi):
            fi.fh = os.open(self._p(path), fi.flags | os.O_CREAT, mode)
            return 0

        def open(self, path, fi):
            fi.fh = os.open(self._p(path), fi.flags)
            return 0

        def write(self, path, data, offset, fi):
            return os.pwrite(fi.fh, data, offset)

        def read(self, path, size, offset, fi):
            return os.pread(fi.fh, size, offset)

        def flush(self, path, fi):
            return 0

        def release(self, path, fi):
            os.close(fi.fh)
            return 0

        def unlink(self, path):
            os.unlink(self._p(path))
            return 0

        def readdir(self, path, fh):
            return [".", ".."] + os.listdir(self._p(path))

        def statfs(self, path):
            st = os.statvfs(self._p(path))
            return {k: getattr(st, k) for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                                                "f_files", "f_ffree", "f_namemax")}

    mfusepy.FUSE(Loop(sys.argv[1]), sys.argv[2], foreground=True, raw_fi=True, default_permissions=True)
''')

PYFUSE3_LOOP = textwrap.dedent('''
    import errno, os, stat, sys
    import pyfuse3, trio

    TIMEOUT = 10.0

    def fail(exc):
        return pyfuse3.FUSEError(exc.errno or errno.EIO)

    class Loop(pyfuse3.Operations):
        enable_writeback_cache = False

        def __init__(self, src):
            super().__init__()
            self.paths = {pyfuse3.ROOT_INODE: src}

        def _attrs(self, st):
            e = pyfuse3.EntryAttributes()
            for k in ("st_ino", "st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size", "st_blksize",
                      "st_blocks", "st_atime_ns", "st_mtime_ns", "st_ctime_ns"):
                setattr(e, k, getattr(st, k))
            e.generation = 0
            e.entry_timeout = e.attr_timeout = TIMEOUT
            return e

        def _child(self, parent, name):
            return os.path.join(self.paths[parent], os.fsdecode(name))

        async def lookup(self, parent, name, ctx=None):
            path = self._child(parent, name)
            try:
                st = os.lstat(path)
            except OSError as exc:
                raise fail(exc)
            self.paths[st.st_ino] = path
            return self._attrs(st)

        async def getattr(self, inode, ctx=None):
            try:
                return self._attrs(os.lstat(self.paths[inode]))
            except OSError as exc:
                raise fail(exc)

        async def forget(self, inode_list):
            pass

        async def create(self, parent, name, mode, flags, ctx):
            path = self._child(parent, name)
            try:
                fd = os.open(path, flags | os.O_CREAT, mode)
                st = os.fstat(fd)
            except OSError as exc:
                raise fail(exc)
            self.paths[st.st_ino] = path
            return pyfuse3.FileInfo(fh=fd), self._attrs(st)

        async def open(self, inode, flags, ctx):
            try:
                return pyfuse3.FileInfo(fh=os.open(self.paths[inode], flags))
            except OSError as exc:
                raise fail(exc)

        async def read(self, fh, off, size):
            return os.pread(fh, size, off)

        async def write(self, fh, off, buf):
            return os.pwrite(fh, buf, off)

        async def flush(self, fh):
            pass

        async def release(self, fh):
            os.close(fh)

        async def unlink(self, parent, name, ctx):
            try:
                os.unlink(self._child(parent, name))
            except OSError as exc:
                raise fail(exc)

        async def opendir(self, inode, ctx):
            return inode

        async def readdir(self, fh, start_id, token):
            names = sorted(os.listdir(self.paths[fh]))
            for i, name in enumerate(names[start_id:], start_id):
                st = os.lstat(os.path.join(self.paths[fh], name))
                self.paths[st.st_ino] = os.path.join(self.paths[fh], name)
                if not pyfuse3.readdir_reply(token, os.fsencode(name), self._attrs(st), i + 1):
                    break

        async def releasedir(self, fh):
            pass

        async def statfs(self, ctx):
            st = os.statvfs(self.paths[pyfuse3.ROOT_INODE])
            s = pyfuse3.StatvfsData()
            for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail",
                      "f_namemax"):
                setattr(s, k, getattr(st, k))
            return s

    options = set(pyfuse3.default_options)
    options.add("fsname=spike")
    options.add("default_permissions")
    pyfuse3.init(Loop(sys.argv[1]), sys.argv[2], options)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)
''')


def spike_python(venv: Path) -> str:
    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([str(python), "-c", "import pyfuse3, trio"]).returncode == 0:
        return str(python)
    if not shutil.which("pkg-config") or subprocess.run(["pkg-config", "--exists", "fuse3"]).returncode:
        subprocess.run(["apt-get", "install", "-y", "-qq", "libfuse3-dev", "pkg-config"], check=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "pyfuse3", "trio"], check=True)
    return str(python)


def is_mounted(path: Path) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == str(path) for line in f)


class Server:
    def __init__(self, name: str, args: list[str], mnt: Path, env: dict | None = None):
        self.name, self.args, self.mnt, self.env = name, args, mnt, env or {}
        self.proc: subprocess.Popen | None = None

    def __enter__(self):
        self.mnt.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.args, env=dict(os.environ, **self.env), stdout=subprocess.DEVNULL,
                                     stderr=open(self.mnt.parent / f"{self.name}.log", "wb"))
        deadline = time.monotonic() + 60
        while not is_mounted(self.mnt):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not mount: {(self.mnt.parent / f'{self.name}.log').read_text()}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        subprocess.run(["fusermount3", "-u", str(self.mnt)], capture_output=True)
        if is_mounted(self.mnt):
            subprocess.run(["fusermount3", "-uz", str(self.mnt)], capture_output=True)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def workload(d: Path, n: int) -> dict[str, float]:
    """ops/s of create+write+close, stat and unlink of n files of 4 KiB in ``d`` (bench/run.py's 3)."""
    created, statted, unlinked = small_files(d, [f"f{i:05d}" for i in range(n)], b"s" * 4096)
    return {"create": n / created, "stat": n / statted, "unlink": n / unlinked}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", default="/var/tmp/wsfs-spike")
    ap.add_argument("--spike-venv", default="/var/tmp/wsfs-spike-venv")
    args = ap.parse_args()
    pyfuse3_python = spike_python(Path(args.spike_venv))
    work = Path(args.dir)
    if work.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=True)
    work.mkdir(parents=True)
    scripts = {}
    for name, text in (("mfusepy", MFUSEPY_LOOP), ("pyfuse3", PYFUSE3_LOOP)):
        scripts[name] = work / f"{name}_loop.py"
        scripts[name].write_text(text)
    for name in ("native", "mfusepy-src", "pyfuse3-src", "hp-src"):
        (work / name).mkdir()
    servers = [
        Server("mfusepy", [sys.executable, str(scripts["mfusepy"]), str(work / "mfusepy-src"), str(work / "mfusepy"),
                           str(REPO)], work / "mfusepy"),
        Server("pyfuse3", [pyfuse3_python, str(scripts["pyfuse3"]), str(work / "pyfuse3-src"), str(work / "pyfuse3")],
               work / "pyfuse3"),
        Server("wsfs", [sys.executable, "-m", "wsfs", "mount", str(work / "wsfs"), "--data", str(work / "wsfs-data"),
                        "--foreground"], work / "wsfs", {"PYTHONPATH": str(REPO)}),
    ]
    if HP.exists():
        servers.append(Server("passthrough_hp", [str(HP), "--foreground", str(work / "hp-src"), str(work / "hp")],
                              work / "hp", {"LD_LIBRARY_PATH": str(HP.parent)}))
    results: dict[str, dict[str, list[float]]] = {}
    entered = []
    try:
        for server in servers:
            entered.append(server.__enter__())
        os.mkdir(work / "wsfs" / "workspaces" / "spike")
        targets = {"native": work / "native", "mfusepy": work / "mfusepy", "pyfuse3": work / "pyfuse3",
                   "wsfs": work / "wsfs" / "workspaces" / "spike" / "output", "passthrough_hp": work / "hp"}
        targets = {k: v for k, v in targets.items() if k == "native" or any(s.name == k for s in servers)}
        for r in range(args.runs):
            for name, target in targets.items():
                os.sync()
                time.sleep(0.5)
                got = workload(target, args.files)
                for phase, value in got.items():
                    results.setdefault(name, {}).setdefault(phase, []).append(value)
                print(f"run {r} {name:15} " + "  ".join(f"{k} {v:9,.0f}/s" for k, v in got.items()), flush=True)
    finally:
        for server in reversed(entered):
            server.__exit__(None, None, None)
    print(f"\nmedian of {args.runs} runs, {args.files:,} files of 4 KiB (ops/s; in brackets: ratio to native)")
    print(f"{'':15} {'create+write+close':>26} {'stat':>22} {'unlink':>22}")
    for name, phases in results.items():
        cells = []
        for phase in ("create", "stat", "unlink"):
            med = statistics.median(phases[phase])
            cells.append(f"{med:>14,.0f} ({med / statistics.median(results['native'][phase]):.3f}×)")
        print(f"{name:15} " + " ".join(f"{c:>22}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
