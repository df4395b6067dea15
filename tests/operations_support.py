"""The FUSE operations driven with no mount (s3ql's ``t3_fs_api.py`` style): the ``fs`` fixture
gives ``WsfsOperations`` on a fresh data dir, and ``Fs`` does with them what a shell would.

Each call is made as libfuse would make it (a path, a mode, a file-info with ``flags`` and
``fh``).  The caller (uid, gid, umask) is given to the operations class instead of read from
libfuse's request context.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import threading
import types

import pytest
from conftest import make_core, parse_toml_config

from wsfs.fuse.binding import FuseOSError
from wsfs.fuse.operations import WsfsOperations

ME = (os.getuid(), os.getgid())


class Caller:
    """Who the next operations come from (libfuse's request context, stood in for)."""

    def __init__(self):
        self.uid, self.gid, self.umask = *ME, 0o022

    def context(self):
        return self.uid, self.gid, os.getpid()


class Fs:
    """The operations plus what a shell would do with them."""

    def __init__(self, ops: WsfsOperations, caller: Caller):
        self.ops, self.caller = ops, caller

    def fi(self, flags: int) -> types.SimpleNamespace:
        return types.SimpleNamespace(flags=flags, fh=0, direct_io=0, keep_cache=0)

    @contextlib.contextmanager
    def opened(self, path: str, flags: int):
        """An open file: its file-info while the block runs, released after."""
        fi = self.fi(flags)
        self.ops.open(path, fi)
        try:
            yield fi
        finally:
            self.ops.release(path, fi)

    def write(self, path: str, data: bytes, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> None:
        """``echo data > path``: create (or open and truncate), write, flush, release."""
        fi = self.fi(flags)
        try:
            self.ops.getattr(path)
            self.ops.open(path, fi)
            if flags & os.O_TRUNC:
                self.ops.truncate(path, 0, fi)
        except FuseOSError as exc:
            if exc.errno != errno.ENOENT:
                raise
            self.ops.create(path, 0o666 & ~self.caller.umask, fi)
        try:
            offset = self.ops.getattr(path, fi)["st_size"] if flags & os.O_APPEND else 0
            self.ops.write(path, data, offset, fi)
            self.ops.flush(path, fi)
        finally:
            self.ops.release(path, fi)

    def command(self, path: str, text: str) -> None:
        """``echo text > path`` on a control file: one write()."""
        with self.opened(path, os.O_WRONLY | os.O_TRUNC) as fi:
            self.ops.write(path, (text + "\n").encode(), 0, fi)

    def read(self, path: str) -> bytes:
        with self.opened(path, os.O_RDONLY) as fi:
            return self.ops.read(path, 1 << 20, 0, fi)

    def ls(self, path: str) -> list[str]:
        fh = self.ops.opendir(path)
        try:
            return sorted(name for name, _attrs, _off in self.ops.readdir(path, fh) if name not in (".", ".."))
        finally:
            self.ops.releasedir(path, fh)

    def job(self, job: str) -> dict:
        return json.loads(self.read(f"/workspaces/{job}/.job"))

    def manifest(self, job: str) -> list[dict]:
        """``.manifest``'s entries, the queue of manifest changes stored first (as a reader's
        ``.manifest`` read does in the daemon)."""
        self.ops.service.manifest.flush()
        return [json.loads(line) for line in self.read(f"/workspaces/{job}/.manifest").splitlines()]

    def events(self, kind: str) -> list[dict]:
        return [e for e in map(json.loads, self.read("/.wsfs/events").splitlines()) if e["kind"] == kind]


def refused(errno_: int, call, *args):
    """``call(*args)`` fails with ``errno_``."""
    with pytest.raises(FuseOSError) as info:
        call(*args)
    assert info.value.errno == errno_, (os.strerror(info.value.errno), os.strerror(errno_))


@contextlib.contextmanager
def fresh_fs(data_dir, config: str = ""):
    """An ``Fs`` on a fresh data dir, its hasher thread running as in the daemon; closed after."""
    service = make_core(data_dir, config=parse_toml_config(config))
    caller = Caller()
    ops = WsfsOperations(service, service.tree, context=caller.context, umask=lambda: caller.umask)
    stop = threading.Event()
    thread = threading.Thread(target=ops.hasher.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield Fs(ops, caller)
    finally:
        stop.set()
        ops.hasher.poke()
        thread.join(5)
        service.manifest.flush()
        service.store.close()
        service.tree.close()


@pytest.fixture
def fs(tmp_path):
    """make(config="") -> Fs on a fresh data dir (``fresh_fs``), closed after the test."""
    with contextlib.ExitStack() as stack:
        made = iter(range(1000))
        yield lambda config="": stack.enter_context(fresh_fs(tmp_path / f"data{next(made) or ''}", config))


@pytest.fixture
def f(fs):
    """An ``Fs`` on a fresh data dir with one running job, ``j`` (made by ``mkdir -m 0755``)."""
    made = fs()
    made.ops.mkdir("/workspaces/j", 0o755)
    return made
