"""``.wsfs/control`` through the operations, no mount (docs/spec.md §10): creating on behalf of
a user, cloning, notes, publishing requests, and the commands that need a daemon refused
clearly when none runs.  Each refused command changes nothing and is recorded."""

from __future__ import annotations

import errno
import json
import urllib.parse

from operations_support import refused

ALICE, BOB = 65533, 65534


def test_root_creates_a_job_on_behalf_of_a_user_and_nobody_else_may(fs):
    f = fs()
    f.caller.uid, f.caller.gid = 0, 0
    f.command("/.wsfs/control", f"create forher uid={ALICE} gid={ALICE}")
    assert (f.job("forher")["uid"], f.job("forher")["gid"]) == (ALICE, ALICE)
    refused(errno.EINVAL, f.command, "/.wsfs/control", f"create half uid={ALICE}")  # uid= and gid= go together
    f.caller.uid, f.caller.gid = BOB, BOB
    refused(errno.EPERM, f.command, "/.wsfs/control", f"create forme uid={BOB} gid={BOB}")
    assert f.ls("/workspaces") == ["forher"]


def test_a_clone_copies_the_areas_and_records_its_origin(fs):
    f = fs()
    f.ops.mkdir("/workspaces/src", 0o755)
    f.ops.mkdir("/workspaces/src/input/d", 0o755)
    f.write("/workspaces/src/input/d/data", b"input bytes")
    f.write("/workspaces/src/output/result", b"result")
    f.command("/.wsfs/control", "clone src copy")
    assert f.read("/workspaces/copy/input/d/data") == b"input bytes"
    assert f.read("/workspaces/copy/output/result") == b"result"
    assert f.job("copy")["origin"] == "src"
    assert {e["path"]: e["size"] for e in f.manifest("copy")} == {"input/d/data": 11, "output/result": 6}
    assert f.job("copy")["usage"] == {"bytes": 17, "files": 2}
    refused(errno.EEXIST, f.command, "/.wsfs/control", "clone src copy")
    refused(errno.ENOENT, f.command, "/.wsfs/control", "clone nosuch other")


def test_a_clone_needs_a_tree_and_files_its_caller_may_read(fs):
    f = fs()
    f.caller.uid, f.caller.gid = ALICE, ALICE
    f.ops.mkdir("/workspaces/private", 0o755)
    f.ops.mkdir("/workspaces/private/input/secret", 0o700)
    f.write("/workspaces/private/input/secret/key", b"k")
    f.caller.uid, f.caller.gid = BOB, BOB
    refused(errno.EACCES, f.command, "/.wsfs/control", "clone private mine")
    assert f.ls("/workspaces") == ["private"]  # nothing half-made is left
    f.caller.uid, f.caller.gid = ALICE, ALICE
    f.command("/workspaces/private/.state", "cancelled")
    f.command("/workspaces/private/.state", "archived")
    refused(errno.EPERM, f.command, "/.wsfs/control", "clone private again")


def test_a_note_keeps_its_whole_text_in_the_events_and_only_for_its_owner(fs):
    f = fs()
    f.caller.uid, f.caller.gid = ALICE, ALICE
    f.ops.mkdir("/workspaces/j", 0o755)
    text = "exit 1: line one\n\tline two, ünïcode"
    f.command("/.wsfs/control", f"note j {urllib.parse.quote(text)}")
    [note] = [e for e in map(json.loads, f.read("/.wsfs/events").splitlines()) if e["kind"] == "note"]
    assert (note["job"], note["text"], note["uid"]) == ("j", text, ALICE)
    f.caller.uid, f.caller.gid = BOB, BOB
    refused(errno.EPERM, f.command, "/.wsfs/control", "note j not%20yours")
    refused(errno.EINVAL, f.command, "/.wsfs/control", "note j")


def test_commands_that_need_the_daemon_say_so_when_none_runs(fs):
    f = fs()
    refused(errno.ENOSYS, f.command, "/.wsfs/control", "sweep")
    refused(errno.ENOSYS, f.command, "/.wsfs/control", "reload")
    refused(errno.EINVAL, f.command, "/.wsfs/control", "sweep now")


def test_publish_is_queued_for_a_jobs_owner_and_root_only(fs, tmp_path):
    f = fs('[templates.pub]\nareas = { output = "keep" }\n'
           f'[[templates.pub.publish]]\narea = "output"\nto = "{tmp_path}/published/{{job}}"\n')
    f.caller.uid, f.caller.gid = ALICE, ALICE
    f.command("/.wsfs/control", "create p template=pub")
    f.command("/workspaces/p/.state", "completed")
    assert f.job("p")["publish"]["status"] == "pending"  # no publisher thread here: it stays queued
    f.caller.uid, f.caller.gid = BOB, BOB
    refused(errno.EPERM, f.command, "/.wsfs/control", "publish p")
    f.caller.uid, f.caller.gid = ALICE, ALICE
    f.command("/.wsfs/control", "publish p retry")
    assert f.job("p")["publish"]["status"] == "pending"
    assert not (tmp_path / "published").exists()
