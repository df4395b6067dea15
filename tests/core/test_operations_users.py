"""Who sees which job, through the operations with no mount (docs/spec.md §12): a job is
read by whoever may read its root directory (its mode, owner and group), and that holds in
``.wsfs/jobs``, ``.wsfs/events``, the control files' modes and the kept receipts.  The
kernel's own permission checks (``default_permissions``) are the mount suites' to test."""

from __future__ import annotations

import errno
import json
import os
import stat

from operations_support import refused

ALICE, BOB, TEAM = 65533, 65534, 4242


def as_(f, uid: int, gid: int) -> None:
    f.caller.uid, f.caller.gid = uid, gid


def listed(f) -> list[str]:
    return sorted(json.loads(line)["id"] for line in f.read("/.wsfs/jobs").splitlines())


def jobs_in_events(f) -> set[str]:
    return {e["job"] for e in map(json.loads, f.read("/.wsfs/events").splitlines()) if e.get("job")}


def test_a_private_job_is_its_owners_and_roots_alone(fs):
    f = fs()
    as_(f, ALICE, ALICE)
    f.ops.mkdir("/workspaces/secret", 0o700)
    f.ops.mkdir("/workspaces/open", 0o755)
    assert listed(f) == ["open", "secret"]
    as_(f, BOB, BOB)
    assert listed(f) == ["open"]
    assert jobs_in_events(f) == {"open"}
    as_(f, 0, 0)
    assert listed(f) == ["open", "secret"] and jobs_in_events(f) == {"open", "secret"}


def test_a_group_readable_job_is_seen_by_its_group(fs):
    f = fs()
    as_(f, ALICE, TEAM)
    f.ops.mkdir("/workspaces/team", 0o750)
    as_(f, BOB, TEAM)
    assert listed(f) == ["team"]
    as_(f, BOB, BOB)
    assert listed(f) == []


def test_the_control_files_modes_follow_the_job_roots_mode(fs):
    f = fs()
    as_(f, ALICE, TEAM)
    f.ops.mkdir("/workspaces/j", 0o750)
    modes = {name: stat.S_IMODE(f.ops.getattr(f"/workspaces/j/{name}")["st_mode"])
             for name in (".state", ".job", ".manifest")}
    assert modes == {".state": 0o640, ".job": 0o440, ".manifest": 0o440}
    attrs = f.ops.getattr("/workspaces/j/.state")
    assert (attrs["st_uid"], attrs["st_gid"]) == (ALICE, TEAM)
    f.ops.chmod("/workspaces/j", 0o700)
    assert stat.S_IMODE(f.ops.getattr("/workspaces/j/.job")["st_mode"]) == 0o400


def test_a_kept_receipt_is_its_owners_to_read(fs):
    f = fs()
    as_(f, ALICE, ALICE)
    f.ops.mkdir("/workspaces/j", 0o755)
    f.command("/workspaces/j/.state", "completed")
    f.command("/workspaces/j/.state", "archived")
    attrs = f.ops.getattr("/.wsfs/receipts/j")
    assert (stat.S_IMODE(attrs["st_mode"]), attrs["st_uid"]) == (0o400, ALICE)
    assert json.loads(f.read("/.wsfs/receipts/j"))["job"] == "j"
    refused(errno.ENOENT, f.ops.getattr, "/.wsfs/receipts/nosuch")
    as_(f, BOB, BOB)
    assert listed(f) == []  # no tree: its owner's alone


def test_another_users_job_is_not_resumed_or_ended_through_control(fs):
    f = fs()
    as_(f, ALICE, ALICE)
    f.ops.mkdir("/workspaces/j", 0o755)
    f.command("/workspaces/j/.state", "failed")
    as_(f, BOB, BOB)
    refused(errno.EPERM, f.command, "/.wsfs/control", "resume j")
    assert f.read("/workspaces/j/.state") == b"failed\n"
    rejected = [e for e in map(json.loads, f.read("/.wsfs/events").splitlines()) if e["kind"] == "rejected"]
    assert [e["uid"] for e in rejected] == [BOB]  # a user sees its own refusals
    as_(f, ALICE, ALICE)
    f.command("/.wsfs/control", "resume j")
    assert f.read("/workspaces/j/.state") == b"running\n"


def test_a_job_made_through_control_belongs_to_whoever_wrote_the_command(fs):
    f = fs()
    as_(f, BOB, TEAM)
    f.command("/.wsfs/control", "create viactl")
    doc = f.job("viactl")
    assert (doc["uid"], doc["gid"]) == (BOB, TEAM)
    if os.geteuid() == 0:  # a daemon run as root gives the new tree to the caller
        attrs = f.ops.getattr("/workspaces/viactl")
        assert (attrs["st_uid"], attrs["st_gid"]) == (BOB, TEAM)


def test_the_top_directories_are_roots_and_the_jobs_dirs_are_open_to_all(fs):
    f = fs()
    for top in ("/", "/workspaces", "/quarantine", "/.wsfs"):
        attrs = f.ops.getattr(top)
        assert stat.S_ISDIR(attrs["st_mode"]), top
    assert stat.S_IMODE(f.ops.getattr("/workspaces")["st_mode"]) & 0o005 == 0o005
    refused(errno.EPERM, f.ops.mkdir, "/quarantine/j", 0o755)
    refused(errno.EPERM, f.ops.rmdir, "/workspaces")
