"""The FUSE operations driven directly, with no mount: ``WsfsOperations`` on a fresh data dir.

In the style of s3ql's ``t3_fs_api.py``: each test calls the operations as libfuse would (a
path, a mode, a file-info with ``flags`` and ``fh``) and checks what comes back and the errno
of what is refused.  The caller (uid, gid, umask) is given to the operations class instead of
read from libfuse's request context.  This covers the view (docs/spec.md §3), the layout
rules, quotas (§8), the seal (§4) and the ``.state`` path (§5) in milliseconds; the mount
tests check the same through the kernel.
"""

from __future__ import annotations

import errno
import json
import os
import stat
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
        fi = self.fi(os.O_WRONLY | os.O_TRUNC)
        self.ops.open(path, fi)
        try:
            self.ops.write(path, (text + "\n").encode(), 0, fi)
        finally:
            self.ops.release(path, fi)

    def read(self, path: str) -> bytes:
        fi = self.fi(os.O_RDONLY)
        self.ops.open(path, fi)
        try:
            return self.ops.read(path, 1 << 20, 0, fi)
        finally:
            self.ops.release(path, fi)

    def ls(self, path: str) -> list[str]:
        fh = self.ops.opendir(path)
        try:
            return sorted(name for name, _attrs, _off in self.ops.readdir(path, fh) if name not in (".", ".."))
        finally:
            self.ops.releasedir(path, fh)

    def job(self, job: str) -> dict:
        return json.loads(self.read(f"/workspaces/{job}/.job"))

    def events(self, kind: str) -> list[dict]:
        return [e for e in map(json.loads, self.read("/.wsfs/events").splitlines()) if e["kind"] == kind]


def refused(errno_: int, call, *args):
    with pytest.raises(FuseOSError) as info:
        call(*args)
    assert info.value.errno == errno_, (os.strerror(info.value.errno), os.strerror(errno_))


@pytest.fixture
def fs(tmp_path):
    """make(config="") -> Fs on a fresh data dir; the hasher thread runs as in the daemon, and the
    manifest's queue is flushed by whoever reads it (as the daemon's readers do) or by the test."""
    made, stop = [], threading.Event()

    def make(config: str = "") -> Fs:
        service = make_core(tmp_path / "data", config=parse_toml_config(config))
        caller = Caller()
        ops = WsfsOperations(service, service.tree, context=caller.context, umask=lambda: caller.umask)
        thread = threading.Thread(target=ops.hasher.run, args=(stop,), daemon=True)
        thread.start()
        made.append((service, ops, thread))
        return Fs(ops, caller)
    yield make
    stop.set()
    for _service, ops, thread in made:
        ops.hasher.poke()
        thread.join(5)
    for service, _ops, _thread in made:
        service.manifest.flush()
        service.store.close()
        service.tree.close()


# -- the view ------------------------------------------------------------------------------


def test_the_top_and_a_new_jobs_root_show_what_the_spec_says(fs):
    f = fs()
    assert f.ls("/") == [".wsfs", "quarantine", "shared", "workspaces"]
    assert f.ls("/.wsfs") == ["control", "events", "jobs", "metrics", "receipts", "status"]
    f.ops.mkdir("/workspaces/j1", 0o755)
    assert f.ls("/workspaces") == ["j1"]
    assert f.ls("/workspaces/j1") == [".job", ".manifest", ".state", "input", "output", "temp"]
    attrs = f.ops.getattr("/workspaces/j1/.state")
    assert stat.S_ISREG(attrs["st_mode"]) and attrs["st_size"] == len(b"running\n")
    assert f.read("/workspaces/j1/.state") == b"running\n"
    assert f.job("j1")["state"] == "running" and f.job("j1")["uid"] == ME[0]
    refused(errno.ENOENT, f.ops.getattr, "/workspaces/nosuch")
    refused(errno.ENOENT, f.ops.getattr, "/elsewhere")


def test_a_file_written_is_in_the_manifest_and_the_usage(fs):
    f = fs()
    f.ops.mkdir("/workspaces/j", 0o755)
    f.write("/workspaces/j/output/a.txt", b"hello\n")
    f.ops.mkdir("/workspaces/j/output/sub", 0o755)
    f.write("/workspaces/j/output/sub/b.txt", b"world!\n")
    assert f.read("/workspaces/j/output/a.txt") == b"hello\n"
    f.ops.service.manifest.flush()
    lines = [json.loads(line) for line in f.read("/workspaces/j/.manifest").splitlines()]
    assert [(e["path"], e["size"]) for e in lines] == [("output/a.txt", 6), ("output/sub/b.txt", 7)]
    assert f.job("j")["usage"] == {"bytes": 13, "files": 2}
    f.ops.rename("/workspaces/j/output/sub", "/workspaces/j/temp/moved")
    f.ops.unlink("/workspaces/j/output/a.txt")
    f.ops.service.manifest.flush()
    lines = [json.loads(line) for line in f.read("/workspaces/j/.manifest").splitlines()]
    assert [e["path"] for e in lines] == ["temp/moved/b.txt"]
    assert f.job("j")["usage"] == {"bytes": 7, "files": 1}


def test_with_posix_acls_the_daemon_applies_the_umask_unless_a_default_acl_decides(fs, tmp_path):
    """With FUSE_CAP_POSIX_ACL the kernel hands over modes unmasked: the daemon applies the
    caller's umask, except in a directory with a default ACL (POSIX: the ACL decides)."""
    from wsfs.core import acl

    f = fs()
    f.ops.service.acls_enforced = True  # as init does when the kernel takes FUSE_CAP_POSIX_ACL
    f.caller.umask = 0o077
    f.ops.mkdir("/workspaces/j", 0o777)
    fi = f.fi(os.O_WRONLY | os.O_CREAT)
    f.ops.create("/workspaces/j/output/private", 0o666, fi)
    f.ops.release("/workspaces/j/output/private", fi)
    f.ops.mkdir("/workspaces/j/output/d", 0o777)
    assert stat.S_IMODE(f.ops.getattr("/workspaces/j")["st_mode"]) == 0o700
    assert stat.S_IMODE(f.ops.getattr("/workspaces/j/output/private")["st_mode"]) == 0o600
    assert stat.S_IMODE(f.ops.getattr("/workspaces/j/output/d")["st_mode"]) == 0o700
    inherit = acl.encode(acl.granted(acl.from_mode(0o770), acl.USER, 65533, acl.R | acl.W | acl.X))
    os.setxattr(tmp_path / "data" / "jobs" / "j" / "temp", acl.DEFAULT, inherit)
    fi = f.fi(os.O_WRONLY | os.O_CREAT)
    f.ops.create("/workspaces/j/temp/shared", 0o666, fi)
    f.ops.release("/workspaces/j/temp/shared", fi)
    assert stat.S_IMODE(f.ops.getattr("/workspaces/j/temp/shared")["st_mode"]) == 0o660  # the ACL's mask, no umask


# -- layout rules --------------------------------------------------------------------------


def test_only_areas_live_at_a_jobs_root_and_only_the_tops_at_the_top(fs):
    f = fs()
    f.ops.mkdir("/workspaces/j", 0o755)
    refused(errno.EPERM, f.ops.create, "/workspaces/j/stray", 0o644, f.fi(os.O_WRONLY | os.O_CREAT))
    refused(errno.EPERM, f.ops.mkdir, "/workspaces/j/extra", 0o755)
    refused(errno.EPERM, f.ops.mkdir, "/workspaces/j/output", 0o755)  # areas are made with the job
    refused(errno.EPERM, f.ops.rmdir, "/workspaces/j")
    refused(errno.EPERM, f.ops.unlink, "/workspaces/j/.state")
    refused(errno.EPERM, f.ops.mkdir, "/elsewhere", 0o755)
    refused(errno.EINVAL, f.ops.mkdir, "/workspaces/-bad", 0o755)
    refused(errno.EEXIST, f.ops.mkdir, "/workspaces/j", 0o755)
    assert f.ls("/workspaces/j") == [".job", ".manifest", ".state", "input", "output", "temp"]


# -- limits --------------------------------------------------------------------------------


def test_a_quota_refuses_the_write_that_crosses_it_and_nothing_is_partly_written(fs):
    f = fs()
    f.command("/.wsfs/control", "create q quota=1K max_files=2")
    f.write("/workspaces/q/output/a", b"x" * 1000)
    refused(errno.EDQUOT, f.write, "/workspaces/q/output/a", b"y" * 100, os.O_WRONLY | os.O_APPEND)
    assert f.ops.getattr("/workspaces/q/output/a")["st_size"] == 1000
    f.write("/workspaces/q/output/b", b"")
    refused(errno.EDQUOT, f.write, "/workspaces/q/output/c", b"")
    assert f.ls("/workspaces/q/output") == ["a", "b"]


def test_a_template_with_max_jobs_refuses_the_mkdir_past_it(fs):
    f = fs('[templates.one]\nareas = { out = "keep" }\nmax_jobs = 1\n')
    f.command("/.wsfs/control", "create a template=one")
    refused(errno.EDQUOT, f.command, "/.wsfs/control", "create b template=one")
    assert f.ls("/workspaces") == ["a"]


# -- the .state path and the seal ----------------------------------------------------------


def test_bad_state_words_change_nothing_and_are_recorded(fs):
    f = fs()
    f.ops.mkdir("/workspaces/j", 0o755)
    refused(errno.EINVAL, f.command, "/workspaces/j/.state", "finished")
    refused(errno.EINVAL, f.command, "/workspaces/j/.state", "stage two words")
    refused(errno.EINVAL, f.command, "/workspaces/j/.state", "drop nosuch")
    refused(errno.EPERM, f.command, "/workspaces/j/.state", "drop output")
    assert f.read("/workspaces/j/.state") == b"running\n"
    assert len([e for e in f.events("rejected") if e["job"] == "j"]) == 4
    f.command("/workspaces/j/.state", "stage encoding")
    assert f.job("j")["stage"] == "encoding"


def test_completed_seals_the_workspace_writes_a_receipt_and_drops_scratch(fs):
    f = fs()
    f.ops.mkdir("/workspaces/j", 0o755)
    f.write("/workspaces/j/output/result", b"42\n")
    f.write("/workspaces/j/temp/scratch", b"x" * 4096)
    f.command("/workspaces/j/.state", "completed")
    assert f.ls("/workspaces/j") == [".job", ".manifest", ".state", "input", "output", "receipt.json"]
    receipt = json.loads(f.read("/workspaces/j/receipt.json"))
    assert receipt["state"] == "completed" and [o["path"] for o in receipt["outputs"]] == ["output/result"]
    for call, args in ((f.write, ("/workspaces/j/output/result", b"changed")),
                       (f.ops.unlink, ("/workspaces/j/output/result",)),
                       (f.ops.mkdir, ("/workspaces/j/output/new", 0o755)),
                       (f.ops.chmod, ("/workspaces/j/output/result", 0o600)),
                       (f.ops.rename, ("/workspaces/j/output/result", "/workspaces/j/output/other")),
                       (f.ops.truncate, ("/workspaces/j/output/result", 0))):
        refused(errno.EROFS, call, *args)
    assert f.read("/workspaces/j/output/result") == b"42\n"
    refused(errno.EPERM, f.command, "/workspaces/j/.state", "failed")
    assert f.read("/workspaces/j/.state") == b"completed\n"


def test_drop_empties_a_scratch_area_of_a_running_job(fs):
    f = fs()
    f.ops.mkdir("/workspaces/j", 0o755)
    f.write("/workspaces/j/temp/big", b"x" * 10000)
    f.command("/workspaces/j/.state", "drop temp")
    assert f.ls("/workspaces/j/temp") == []
    assert f.job("j")["usage"] == {"bytes": 0, "files": 0}


# -- who sees what -------------------------------------------------------------------------


def test_a_private_job_is_not_in_another_users_listing_and_sharing_needs_acls(fs):
    f = fs()
    f.caller.uid, f.caller.gid = 65534, 65534
    f.ops.mkdir("/workspaces/mine", 0o700)
    f.caller.uid, f.caller.gid = 65533, 65533
    assert [json.loads(line)["id"] for line in f.read("/.wsfs/jobs").splitlines()] == []
    f.caller.uid, f.caller.gid = 0, 0
    assert [json.loads(line)["id"] for line in f.read("/.wsfs/jobs").splitlines()] == ["mine"]
    # No kernel enforces ACLs here (nothing negotiated FUSE_CAP_POSIX_ACL): share is refused.
    refused(errno.EOPNOTSUPP, f.command, "/.wsfs/control", "share mine u:65533 r")
