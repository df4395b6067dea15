"""Sharing and dropping through the operations, no mount (docs/spec.md §5, §12): the ACLs a
share writes on the backing tree and what the control files then answer, who may share, and a
scratch area dropped under a file still open.  That the kernel enforces the ACLs is the mount
suite's (``mount/test_share_mount.py``, two real uids)."""

from __future__ import annotations

import errno
import json
import os

import pytest
from operations_support import refused

from wsfs.core import acl

ALICE, BOB, TEAM = 65533, 65534, 4242


@pytest.fixture
def shared(fs, tmp_path):
    """A job of ALICE's (0700) with a file in output/, on a data dir whose kernel 'enforces' ACLs."""
    f = fs()
    f.ops.service.acls_enforced = True  # as init does when the kernel takes FUSE_CAP_POSIX_ACL
    f.caller.uid, f.caller.gid = ALICE, ALICE
    f.ops.mkdir("/workspaces/j", 0o700)
    f.ops.mkdir("/workspaces/j/output/d", 0o700)
    f.write("/workspaces/j/output/d/f", b"data")
    f.data = tmp_path / "data" / "jobs" / "j"
    return f


def entries(path, name=acl.ACCESS) -> list:
    try:
        return acl.decode(os.getxattr(path, name, follow_symlinks=False))
    except OSError as exc:
        assert exc.errno == errno.ENODATA
        return []


def named(path, name=acl.ACCESS) -> dict[tuple[int, int], int]:
    return {(tag, ident): perm for tag, perm, ident in entries(path, name) if tag in (acl.USER, acl.GROUP)}


def test_a_read_share_names_the_user_on_every_file_and_directory_and_the_default_for_new_ones(shared):
    f = shared
    f.command("/.wsfs/control", f"share j u:{BOB} r")
    assert named(f.data) == {(acl.USER, BOB): acl.R | acl.X}
    assert named(f.data / "output" / "d") == {(acl.USER, BOB): acl.R | acl.X}
    assert named(f.data / "output" / "d" / "f") == {(acl.USER, BOB): acl.R}
    default = named(f.data / "output", acl.DEFAULT)
    assert default[(acl.USER, BOB)] == acl.R | acl.X and default[(acl.USER, ALICE)] == acl.R | acl.W | acl.X
    assert f.job("j")["shares"] == {f"u:{BOB}": "r"}
    assert [e["kind"] for e in f.events("shared")] == ["shared"]


def test_a_shared_jobs_control_files_answer_the_roots_named_entries_read_only(shared):
    f = shared
    refused(errno.ENODATA, f.ops.getxattr, "/workspaces/j/.state", acl.ACCESS)  # not shared yet
    f.command("/.wsfs/control", f"share j g:{TEAM} rw")
    got = {(tag, ident): perm for tag, perm, ident in acl.decode(f.ops.getxattr("/workspaces/j/.state", acl.ACCESS))
           if tag in (acl.USER, acl.GROUP)}
    assert got == {(acl.GROUP, TEAM): acl.R}  # .state stays its owner's to write
    assert named(f.data / "output" / "d" / "f") == {(acl.GROUP, TEAM): acl.R | acl.W}


def test_unshare_takes_every_entry_back_and_the_defaults_go_with_the_last_share(shared):
    f = shared
    f.command("/.wsfs/control", f"share j u:{BOB} rw")
    f.command("/.wsfs/control", f"unshare j u:{BOB}")
    assert named(f.data / "output" / "d" / "f") == {} and named(f.data) == {}
    assert entries(f.data / "output", acl.DEFAULT) == []
    assert f.job("j")["shares"] == {}
    refused(errno.EINVAL, f.command, "/.wsfs/control", f"unshare j u:{BOB}")  # not shared any more


def test_only_the_owner_or_root_shares_and_never_with_the_owner(shared):
    f = shared
    f.caller.uid, f.caller.gid = BOB, BOB
    refused(errno.EPERM, f.command, "/.wsfs/control", f"share j u:{BOB} rw")
    f.caller.uid, f.caller.gid = ALICE, ALICE
    refused(errno.EINVAL, f.command, "/.wsfs/control", f"share j u:{ALICE} r")
    refused(errno.EINVAL, f.command, "/.wsfs/control", f"share j u:{BOB} everything")
    f.caller.uid, f.caller.gid = 0, 0
    f.command("/.wsfs/control", f"share j u:{BOB} r")
    assert named(f.data) == {(acl.USER, BOB): acl.R | acl.X}


def test_a_shared_job_is_listed_for_the_sharee(shared):
    f = shared
    f.caller.uid, f.caller.gid = BOB, BOB
    assert f.read("/.wsfs/jobs") == b""
    f.caller.uid, f.caller.gid = ALICE, ALICE
    f.command("/.wsfs/control", f"share j u:{BOB} r")
    f.caller.uid, f.caller.gid = BOB, BOB
    assert [json.loads(line)["id"] for line in f.read("/.wsfs/jobs").splitlines()] == ["j"]


def test_an_ended_job_is_not_shared_any_more(shared):
    f = shared
    f.command("/workspaces/j/.state", "completed")
    f.command("/workspaces/j/.state", "archived")
    refused(errno.EPERM, f.command, "/.wsfs/control", f"share j u:{BOB} r")


def test_a_file_open_in_a_dropped_area_keeps_working_outside_the_job(fs):
    f = fs()
    f.ops.mkdir("/workspaces/j", 0o755)
    f.write("/workspaces/j/temp/big", b"x" * 4096)
    with f.opened("/workspaces/j/temp/big", os.O_RDWR) as fi:
        f.command("/workspaces/j/.state", "drop temp")
        assert f.ls("/workspaces/j/temp") == [] and f.job("j")["usage"] == {"bytes": 0, "files": 0}
        assert f.ops.write("/workspaces/j/temp/big", b"more", 4096, fi) == 4
        assert f.ops.getattr("/workspaces/j/temp/big", fi)["st_size"] == 4100  # fstat of the open file
        assert f.ops.read("/workspaces/j/temp/big", 8, 4092, fi) == b"xxxxmore"
    assert f.job("j")["usage"] == {"bytes": 0, "files": 0} and f.manifest("j") == []
    assert [(e["job"], e["areas"]) for e in f.events("dropped")] == [("j", {"temp": {"bytes": 4096, "files": 1}})]
