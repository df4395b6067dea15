"""A job's life through the operations, no mount: every ``.state`` word and control command a
user writes, and what the virtual files then show (docs/spec.md §3-§7, §10)."""

from __future__ import annotations

import errno
import json
import os

from operations_support import refused


def test_failed_keeps_scratch_and_seals_with_a_receipt_that_says_why(f):
    f.write("/workspaces/j/temp/log", b"boom\n")
    f.command("/workspaces/j/.state", "failed exit code 3")
    assert f.read("/workspaces/j/.state") == b"failed\n"
    assert f.ls("/workspaces/j/temp") == ["log"]
    receipt = json.loads(f.read("/workspaces/j/receipt.json"))
    assert (receipt["state"], receipt["reason"]) == ("failed", "exit code 3")
    assert f.job("j")["sealed"] is True and f.job("j")["reason"] == "exit code 3"
    refused(errno.EROFS, f.write, "/workspaces/j/temp/log", b"more")


def test_cancelled_then_archived_leaves_only_the_kept_receipt(f):
    f.write("/workspaces/j/output/o", b"o")
    f.command("/workspaces/j/.state", "cancelled")
    receipt = f.read("/workspaces/j/receipt.json")
    f.command("/workspaces/j/.state", "archived")
    assert f.ls("/workspaces") == []
    refused(errno.ENOENT, f.ops.getattr, "/workspaces/j")
    assert f.ls("/.wsfs/receipts") == []  # looked up by name, never listed
    assert f.read("/.wsfs/receipts/j") == receipt


def test_a_second_ending_is_refused_and_the_first_stands(f):
    f.command("/workspaces/j/.state", "completed")
    for word in ("failed", "cancelled", "completed"):
        refused(errno.EPERM, f.command, "/workspaces/j/.state", word)
    refused(errno.EINVAL, f.command, "/workspaces/j/.state", "running")  # resume is a control command
    assert f.read("/workspaces/j/.state") == b"completed\n"
    assert [e["to"] for e in f.events("transition") if e["job"] == "j"] == ["completed"]


def test_a_failed_job_resumes_through_the_control_file_and_writes_again(f):
    f.write("/workspaces/j/output/half", b"half")
    f.command("/workspaces/j/.state", "failed")
    f.command("/.wsfs/control", "resume j")
    assert f.read("/workspaces/j/.state") == b"running\n"
    assert "receipt.json" not in f.ls("/workspaces/j")
    f.write("/workspaces/j/output/half", b"whole")
    f.command("/workspaces/j/.state", "completed")
    receipt = json.loads(f.read("/workspaces/j/receipt.json"))
    assert [(o["path"], o["size"]) for o in receipt["outputs"]] == [("output/half", 5)]


def test_crashed_moves_the_job_to_quarantine_and_no_user_may_say_crashed(fs):
    from wsfs.core.model import JobState

    f = fs()
    f.ops.mkdir("/workspaces/j", 0o755)
    f.write("/workspaces/j/output/o", b"o")
    refused(errno.EINVAL, f.command, "/workspaces/j/.state", "crashed")  # the daemon's word, not a job's
    f.ops.service.transition("j", JobState.CRASHED, "its owner died")
    assert f.ls("/workspaces") == [] and f.ls("/quarantine") == ["j"]
    assert f.read("/quarantine/j/output/o") == b"o"
    assert json.loads(f.read("/quarantine/j/.job"))["location"] == "quarantine"
    refused(errno.EROFS, f.write, "/quarantine/j/output/o", b"x")


def test_stages_labels_and_leases_are_recorded_in_the_job_document(fs):
    f = fs()
    f.command("/.wsfs/control", "create j max_running=1h")
    f.command("/workspaces/j/.state", "stage decode")
    f.command("/workspaces/j/.state", "stage encode")
    f.command("/workspaces/j/.state", "label slurm_job=4242")
    before = f.job("j")["expires_at"]
    f.command("/workspaces/j/.state", "extend 2h")
    doc = f.job("j")
    assert [s["name"] for s in doc["stages"]] == ["decode", "encode"] and doc["stage"] == "encode"
    assert doc["labels"] == {"slurm_job": "4242"}
    assert doc["extensions"] == 1 and doc["expires_at"] > before
    assert doc["max_running"] == 3600


def test_a_stage_may_drop_a_scratch_area_in_the_same_write(f):
    f.write("/workspaces/j/temp/frames", b"f" * 5000)
    f.command("/workspaces/j/.state", "stage mux drop=temp")
    assert f.ls("/workspaces/j/temp") == []
    assert f.job("j")["stages"][-1]["name"] == "mux" and f.job("j")["usage"]["bytes"] == 0
    assert [e["job"] for e in f.events("dropped")] == ["j"]


BAD_CONTROL = [
    (errno.EINVAL, "frobnicate j"),
    (errno.EINVAL, "create -bad"),
    (errno.EEXIST, "create j"),
    (errno.ENOENT, "resume nosuch"),
    (errno.EINVAL, "create k template=nosuch"),
    (errno.EPERM, "resume j"),  # running: nothing to resume
]


def test_bad_control_commands_are_refused_with_the_right_errno_and_change_nothing(f):
    for number, text in BAD_CONTROL:
        refused(number, f.command, "/.wsfs/control", text)
    assert f.ls("/workspaces") == ["j"]
    assert [e["command"] for e in f.events("rejected")] == [text for _n, text in BAD_CONTROL]


def test_an_id_once_used_is_never_used_again(f):
    f.command("/workspaces/j/.state", "cancelled")
    f.command("/workspaces/j/.state", "archived")
    refused(errno.EEXIST, f.ops.mkdir, "/workspaces/j", 0o755)
    refused(errno.EEXIST, f.command, "/.wsfs/control", "create j")


def test_a_template_gives_its_areas_and_completion_drops_only_its_scratch(fs):
    f = fs('[templates.media]\nareas = { src = "input", out = "keep", frames = "scratch", cache = "scratch" }\n')
    f.command("/.wsfs/control", "create m template=media")
    assert f.ls("/workspaces/m") == [".job", ".manifest", ".state", "cache", "frames", "out", "src"]
    f.write("/workspaces/m/frames/0001", b"f")
    f.write("/workspaces/m/out/movie", b"movie")
    f.write("/workspaces/m/src/raw", b"raw")
    f.command("/workspaces/m/.state", "completed")
    assert f.ls("/workspaces/m") == [".job", ".manifest", ".state", "out", "receipt.json", "src"]
    receipt = json.loads(f.read("/workspaces/m/receipt.json"))
    assert [o["path"] for o in receipt["outputs"]] == ["out/movie"]
    assert [e["path"] for e in f.manifest("m")] == ["out/movie", "src/raw"]


def test_the_manifest_shows_sha256_once_a_file_is_hashed(fs):
    import hashlib

    f = fs()
    f.ops.mkdir("/workspaces/j", 0o755)
    f.write("/workspaces/j/output/f", b"hash me")
    f.command("/workspaces/j/.state", "completed")
    [entry] = f.manifest("j")
    assert entry["sha256"] == hashlib.sha256(b"hash me").hexdigest()


def test_the_jobs_listing_has_every_job_and_its_state(fs):
    f = fs()
    for job in ("a", "b", "c"):
        f.ops.mkdir(f"/workspaces/{job}", 0o755)
    f.command("/workspaces/b/.state", "completed")
    assert f.ops.service.records.counts() == {"running": 2, "completed": 1}
    lines = [json.loads(line) for line in f.read("/.wsfs/jobs").splitlines()]
    assert sorted((j["id"], j["state"]) for j in lines) == [("a", "running"), ("b", "completed"), ("c", "running")]


def test_the_virtual_files_are_read_only_except_state_and_control(f):
    for path in ("/workspaces/j/.job", "/workspaces/j/.manifest", "/.wsfs/status", "/.wsfs/jobs", "/.wsfs/events"):
        mode = f.ops.getattr(path)["st_mode"]
        assert not mode & 0o222, path
    assert f.ops.getattr("/workspaces/j/.state")["st_mode"] & 0o200
    assert f.ops.getattr("/.wsfs/control")["st_mode"] & 0o200
    refused(errno.EACCES, f.ops.truncate, "/workspaces/j/.job", 0)
    assert json.loads(f.read("/workspaces/j/.job"))["id"] == "j"


def test_a_job_ended_while_a_file_is_open_for_writing_refuses_the_next_write(f):
    f.write("/workspaces/j/output/log", b"first\n")
    with f.opened("/workspaces/j/output/log", os.O_WRONLY) as fi:
        f.command("/workspaces/j/.state", "completed")
        refused(errno.EROFS, f.ops.write, "/workspaces/j/output/log", b"late\n", 6, fi)
    assert f.read("/workspaces/j/output/log") == b"first\n"
    receipt = json.loads(f.read("/workspaces/j/receipt.json"))
    assert [(o["path"], o["size"]) for o in receipt["outputs"]] == [("output/log", 6)]
