"""The FUSE operations driven directly, with no mount: ``WsfsOperations`` on a fresh data dir.

In the style of s3ql's ``t3_fs_api.py`` (``operations_support`` has the ``fs`` fixture): each
test calls the operations as libfuse would and checks what comes back and the errno of what
is refused.  This file covers the view (docs/spec.md §3), the layout
rules, quotas (§8), the seal (§4) and the ``.state`` path (§5) in milliseconds; the mount
tests check the same through the kernel.
"""

from __future__ import annotations

import errno
import json
import os
import stat

from operations_support import ME, refused

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


def test_a_file_written_is_in_the_manifest_and_the_usage(f):
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


def test_only_areas_live_at_a_jobs_root_and_only_the_tops_at_the_top(f):
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


def test_bad_state_words_change_nothing_and_are_recorded(f):
    for number, word in ((errno.EINVAL, "finished"), (errno.EINVAL, "stage two words"),
                         (errno.EINVAL, "drop nosuch"), (errno.EPERM, "drop output")):
        refused(number, f.command, "/workspaces/j/.state", word)
    assert f.read("/workspaces/j/.state") == b"running\n"
    assert len([e for e in f.events("rejected") if e["job"] == "j"]) == 4
    f.command("/workspaces/j/.state", "stage encoding")
    assert f.job("j")["stage"] == "encoding"


def test_completed_seals_the_workspace_writes_a_receipt_and_drops_scratch(f):
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


def test_drop_empties_a_scratch_area_of_a_running_job(f):
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
