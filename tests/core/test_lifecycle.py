"""JobService driven directly (lifecycle.py, docs/spec.md §3-§8): no mount, a fake clock, a tmp data dir.

Files are written the way the FUSE layer writes them: through the ``Tree``
inside ``service.records.mutation(job)``, then ``service.manifest.put`` with the
``os.fstat`` of the open file.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile

import pytest
from conftest import FakeClock, events, make_core
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, precondition, rule

from wsfs.core import errors
from wsfs.core.config import parse_config
from wsfs.core.lifecycle import ARCHIVE_STEPS, CRASH_STEPS, ENDING_STEPS, RECEIPT_FILE, RECORD_VERSION
from wsfs.core.manifest import manifest_bytes
from wsfs.core.model import JobRecord, JobState
from wsfs.core.records import location

NO_SUCH_PID = 1 << 22  # the grammar's ceiling; pid_max is at most this, so no process ever has it
ENDED = {"completed", "failed", "cancelled", "crashed"}
# docs/spec.md §4, by hand (independent of model.TRANSITIONS).
SPEC_EDGES = {
    ("running", "completed"), ("running", "failed"), ("running", "cancelled"), ("running", "crashed"),
    ("failed", "running"), ("crashed", "running"),
    ("completed", "archived"), ("failed", "archived"), ("cancelled", "archived"), ("crashed", "archived"),
}
RECEIPT_FIELDS = {"receipt_version", "job", "template", "state", "reason", "owner", "created", "ended",
                  "duration_s", "stage", "stages", "outputs", "totals", "manifest_sha256"}


# -- helpers ----------------------------------------------------------------------------------


def write_file(core, job: str, path: str, data: bytes, *, stream_sha: bool = False, flush: bool = True) -> None:
    """What fs.create/write/release do: the file through the Tree, then a manifest entry from fstat."""
    with core.records.mutation(job):
        parts = path.split("/")
        for i in range(2, len(parts)):
            d = f"{job}/{'/'.join(parts[:i])}"
            if not core.tree.exists("jobs", d):
                core.tree.mkdir("jobs", d)
        fd = core.tree.open("jobs", f"{job}/{path}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        core.manifest.put(job, path, st, hashlib.sha256(data).digest() if stream_sha else None)
    if flush:
        core.manifest.flush()


def read_file(core, root: str, rel: str) -> bytes:
    return core.tree.read(root, rel)


def stored(core, job: str) -> JobRecord:
    with core.store.read() as r:
        return r.job(job)


def receipt_of(core, job: str) -> tuple[dict, bytes]:
    root, rel = location(stored(core, job))
    data = read_file(core, root, f"{rel}/{RECEIPT_FILE}")
    return json.loads(data), data


def tree_files(core, job: str) -> dict[str, bytes]:
    root, rel = location(stored(core, job))
    return {p: read_file(core, root, f"{rel}/{p}") for p, _st in core.tree.walk_files(root, rel)
            if p not in (RECEIPT_FILE, RECEIPT_FILE + ".tmp")}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_receipt_valid(core, job: str) -> dict:
    """receipt.json: every docs/spec.md §6 field, hashes equal to the files', digest equal to the manifest's."""
    record = stored(core, job)
    receipt, data = receipt_of(core, job)
    assert set(receipt) == RECEIPT_FIELDS
    assert receipt["job"] == job and receipt["state"] == record.state
    assert receipt["template"] == record.template and receipt["reason"] == record.reason
    assert receipt["owner"]["uid"] == record.uid and receipt["owner"]["gid"] == record.gid
    assert receipt["duration_s"] == pytest.approx(record.ended - record.created, abs=1e-3)
    root, rel = location(record)
    keep = {a for a, kind in record.areas.items() if kind == "keep"}
    entries = core.manifest_entries(job)
    expected_outputs = sorted(p for p, _e in entries if p.split("/", 1)[0] in keep)
    assert [o["path"] for o in receipt["outputs"]] == expected_outputs
    for out in receipt["outputs"]:
        content = read_file(core, root, f"{rel}/{out['path']}")
        assert out["sha256"] == sha(content), out["path"]
        assert out["size"] == len(content)
    assert receipt["totals"] == {
        "files": len(entries), "bytes": sum(e[0] for _p, e in entries),
        "output_files": len(receipt["outputs"]), "output_bytes": sum(o["size"] for o in receipt["outputs"]),
    }
    assert receipt["manifest_sha256"] == hashlib.sha256(manifest_bytes(entries)).hexdigest()
    assert record.receipt_sha256 == hashlib.sha256(data).hexdigest()
    return receipt


def populate(core, job: str) -> dict[str, bytes]:
    files = {
        "input/in.txt": b"input data\n",
        "output/result.bin": bytes(range(256)) * 12,
        "output/d/nested.txt": b"nested output\n",
        "temp/scratch.tmp": b"x" * 5000,
        "temp/d/more.tmp": b"more scratch",
    }
    for path, data in files.items():
        write_file(core, job, path, data, stream_sha=path == "output/result.bin")
    return files


# -- creation ----------------------------------------------------------------------------------


def test_create_job_record_and_tree(core, clock):
    record = core.create_job("job1", 1234, 5678)
    assert record == stored(core, "job1")
    assert record.v == RECORD_VERSION
    assert record.id == "job1" and record.state == "running"
    assert record.created == clock.now and record.state_since == clock.now
    assert record.uid == 1234 and record.gid == 5678
    assert record.template == "default"
    assert record.areas == {"input": "input", "output": "keep", "temp": "scratch"}
    assert record.history == [{"state": "running", "at": clock.now}]
    assert record.usage == {"bytes": 0, "files": 0}
    assert record.sealed is False and record.pending is None and record.where == "jobs"
    assert record.ended is None and record.expires_at is None and record.owner is None
    assert sorted(core.tree.listdir("jobs", "job1")) == ["input", "output", "temp"]
    for rel in ("job1", "job1/input", "job1/output", "job1/temp"):
        st = core.tree.lstat("jobs", rel)
        assert stat.S_ISDIR(st.st_mode)
        if os.geteuid() == 0:
            assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert stat.S_IMODE(core.tree.lstat("jobs", "job1").st_mode) == 0o755
    [created] = events(core, "created")
    assert created["job"] == "job1" and created["uid"] == 1234 and created["t"] == clock.now
    assert core.records.counts() == {"running": 1}


def test_create_job_is_durable(tmp_path, clock):
    core = make_core(tmp_path / "data", clock)
    core.create_job("job1", 1, 2)
    core.store.close()
    core.tree.close()
    again = make_core(tmp_path / "data", clock)
    try:
        assert again.records.require("job1").uid == 1
        assert sorted(again.tree.listdir("jobs", "job1")) == ["input", "output", "temp"]
    finally:
        again.store.close()
        again.tree.close()


def test_create_job_options(core):
    record = core.create_job("job1", 1, 1, mode=0o700, quota=1 << 20, max_files=3, owner_pid=os.getpid())
    assert record.quota == 1 << 20 and record.max_files == 3
    assert record.owner["pid"] == os.getpid() and record.owner["create_time"] > 0
    assert stat.S_IMODE(core.tree.lstat("jobs", "job1").st_mode) == 0o700
    with core.store.read() as r:
        assert [j for j, _o in r.owners()] == ["job1"]


def test_create_with_a_template(tmp_path, clock):
    config = parse_config({"templates": {"media": {"areas": {"audio": "scratch", "video": "scratch",
                                                             "output": "keep"}, "quota": "1G"}}})
    core = make_core(tmp_path / "data", clock, config)
    try:
        record = core.create_job("m1", 1, 1, template="media")
        assert record.template == "media" and record.quota == 1 << 30
        assert sorted(core.tree.listdir("jobs", "m1")) == ["audio", "output", "video"]
        write_file(core, "m1", "audio/a.wav", b"a" * 10)
        write_file(core, "m1", "output/o", b"o")
        core.write_state("m1", b"completed")
        assert sorted(core.tree.listdir("jobs", "m1")) == ["output", RECEIPT_FILE]
        assert [o["path"] for o in assert_receipt_valid(core, "m1")["outputs"]] == ["output/o"]
    finally:
        core.store.close()
        core.tree.close()


@pytest.mark.parametrize("job_id", ["", "-x", ".x", "..", "a/b", "j" * 129, "caf\u00e9", "a b", "a\n"])
def test_create_bad_id(core, job_id):
    with pytest.raises(errors.BadJobIdError) as info:
        core.create_job(job_id, 1, 1)
    assert info.value.errno == errno.EINVAL
    assert core.tree.listdir("jobs", "") == [] and events(core) == []


def test_create_reused_id(core):
    core.create_job("job1", 1, 1)
    with pytest.raises(errors.JobExistsError) as info:
        core.create_job("job1", 1, 1)
    assert info.value.errno == errno.EEXIST
    core.write_state("job1", b"completed")
    core.write_state("job1", b"archived")
    assert not core.tree.exists("jobs", "job1")
    with pytest.raises(errors.JobExistsError):
        core.create_job("job1", 1, 1)
    assert stored(core, "job1").state == "archived"


def test_create_unknown_template(core):
    with pytest.raises(errors.BadCommandError) as info:
        core.create_job("job1", 1, 1, template="nope")
    assert info.value.errno == errno.EINVAL and "nope" in str(info.value)
    assert core.records.get("job1") is None and core.tree.listdir("jobs", "") == []


def test_create_with_a_gone_owner(core):
    with pytest.raises(errors.BadCommandError) as info:
        core.create_job("job1", 1, 1, owner_pid=NO_SUCH_PID)
    assert info.value.errno == errno.EINVAL and core.records.get("job1") is None


def test_create_through_control(core):
    core.write_control(b"create job1 quota=1K max_files=2", uid=7, gid=8)
    record = stored(core, "job1")
    assert (record.uid, record.gid, record.quota, record.max_files) == (7, 8, 1024, 2)
    with pytest.raises(errors.JobExistsError):
        core.write_control(b"create job1")
    [rejected] = events(core, "rejected")
    assert rejected["via"] == "control" and rejected["errno"] == "EEXIST" and rejected["job"] == "job1"


def test_max_jobs(tmp_path, clock):
    core = make_core(tmp_path / "data", clock, parse_config({"max_jobs": 1}))
    try:
        core.create_job("a", 1, 1)
        with pytest.raises(errors.QuotaError) as info:
            core.create_job("b", 1, 1)
        assert info.value.errno == errno.EDQUOT and core.records.get("b") is None
        core.write_state("a", b"cancelled")
        with pytest.raises(errors.QuotaError):
            core.create_job("b", 1, 1)       # a cancelled job's tree still counts
        core.write_state("a", b"archived")
        core.create_job("b", 1, 1)
    finally:
        core.store.close()
        core.tree.close()


def test_min_free(tmp_path, clock):
    core = make_core(tmp_path / "data", clock, parse_config({"min_free": "8000P"}))
    try:
        with pytest.raises(errors.NoSpaceError) as info:
            core.create_job("a", 1, 1)
        assert info.value.errno == errno.ENOSPC and core.records.get("a") is None
    finally:
        core.store.close()
        core.tree.close()


def test_an_orphan_tree_is_moved_aside(core):
    core.tree.mkdir("jobs", "job1")
    os.close(core.tree.open("jobs", "job1/leftover", os.O_WRONLY | os.O_CREAT))
    core.create_job("job1", 1, 1)
    assert sorted(core.tree.listdir("jobs", "job1")) == ["input", "output", "temp"]
    assert [n for n in core.tree.listdir("trash", "") if n.startswith("job1.orphan.")]


# -- .state commands -----------------------------------------------------------------------------


def test_stage_and_owner(core, clock):
    core.create_job("job1", 1, 1)
    clock.advance(5)
    core.write_state("job1", b"stage preparing\n")
    clock.advance(5)
    core.write_state("job1", b"stage converting")
    core.write_state("job1", f"owner {os.getpid()}".encode())
    record = stored(core, "job1")
    assert record.stage == "converting"
    assert record.stages == [{"name": "preparing", "at": clock.now - 5}, {"name": "converting", "at": clock.now}]
    assert record.owner["pid"] == os.getpid()
    with core.store.read() as r:
        assert r.owners() == [("job1", record.owner)]
    assert [e["stage"] for e in events(core, "stage")] == ["preparing", "converting"]
    clock.advance(5)
    core.write_state("job1", b"failed converter crashed")
    receipt = assert_receipt_valid(core, "job1")
    assert receipt["stage"] == "converting" and receipt["reason"] == "converter crashed"
    assert [s["name"] for s in receipt["stages"]] == ["preparing", "converting"]
    assert receipt["owner"]["pid"] == os.getpid()
    with core.store.read() as r:
        assert r.owners() == []   # an ended job has no owner to watch


@pytest.mark.parametrize("word, reason, expiry", [
    (b"completed", None, None),
    (b"failed", None, 7 * 86400.0),
    (b"failed out of memory", "out of memory", 7 * 86400.0),
    (b"cancelled", None, 86400.0),
    (b"cancelled by the user\n", "by the user", 86400.0),
])
def test_ending(core, clock, word, reason, expiry):
    core.create_job("job1", 1, 1)
    files = populate(core, "job1")
    clock.advance(90)
    core.write_state("job1", word)
    target = word.split()[0].decode()
    record = stored(core, "job1")
    assert record.state == target and record.reason == reason
    assert record.sealed is True and record.pending is None
    assert record.ended == clock.now and record.state_since == clock.now
    assert record.expires_at == (None if expiry is None else clock.now + expiry)
    assert record.history[-1] == {"state": target, "at": clock.now, "reason": reason}
    with core.store.read() as r:
        assert r.pending_ids() == []
        assert list(r.due(10 ** 12)) == ([] if expiry is None else [(clock.now + expiry, "job1")])
    [event] = events(core, "transition")
    assert (event["from"], event["to"]) == ("running", target)
    receipt = assert_receipt_valid(core, "job1")
    assert receipt["duration_s"] == 90.0
    assert [o["path"] for o in receipt["outputs"]] == ["output/d/nested.txt", "output/result.bin"]
    kept = tree_files(core, "job1")
    if target == "completed":
        assert "temp" not in core.tree.listdir("jobs", "job1")
        assert [n for n in core.tree.listdir("trash", "") if n.startswith("job1.temp.")]
        assert kept == {p: d for p, d in files.items() if not p.startswith("temp/")}
    else:
        assert kept == files   # everything kept; temp is not hashed
        assert all(not o["path"].startswith("temp/") for o in receipt["outputs"])
    assert {p for p, _e in core.manifest_entries("job1")} == set(kept)
    assert record.usage == {"bytes": sum(map(len, kept.values())), "files": len(kept)}
    assert stat.S_IMODE(core.tree.lstat("jobs", f"job1/{RECEIPT_FILE}").st_mode) == 0o444
    with pytest.raises(errors.SealedError) as info:
        with core.records.mutation("job1"):
            pass
    assert info.value.errno == errno.EROFS


def test_receipt_hashes_what_is_on_disk_not_a_stale_entry(core):
    core.create_job("job1", 1, 1)
    write_file(core, "job1", "output/a", b"first version", stream_sha=True)
    # The file changes after its entry was made (a write the manifest has not seen yet).
    fd = core.tree.open("jobs", "job1/output/a", os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"second, longer version")
    os.close(fd)
    core.write_state("job1", b"completed")
    receipt = assert_receipt_valid(core, "job1")
    assert receipt["outputs"] == [{"path": "output/a", "size": 22, "sha256": sha(b"second, longer version")}]


def test_receipt_when_a_listed_file_is_gone(core):
    """A manifest entry whose file vanished (say, removed by hand) must not wedge the ending."""
    core.create_job("job1", 1, 1)
    write_file(core, "job1", "output/a", b"kept")
    write_file(core, "job1", "output/gone", b"vanishes")
    core.tree.unlink("jobs", "job1/output/gone")
    core.write_state("job1", b"completed")
    record = stored(core, "job1")
    assert record.state == "completed" and record.pending is None
    assert record.usage == {"bytes": 4, "files": 1}
    receipt = assert_receipt_valid(core, "job1")
    assert [o["path"] for o in receipt["outputs"]] == ["output/a"]


def test_archived(core, clock):
    core.create_job("job1", 1, 1)
    populate(core, "job1")
    core.write_state("job1", b"failed")
    clock.advance(10)
    core.write_state("job1", b"archived\n")
    record = stored(core, "job1")
    assert record.state == "archived" and record.where is None and record.expires_at is None
    assert record.history[-1]["state"] == "archived"
    assert not core.tree.exists("jobs", "job1")
    assert [n for n in core.tree.listdir("trash", "") if n.startswith("job1.archived.")]
    assert core.manifest_entries("job1") == []
    with core.store.read() as r:
        assert list(r.due(10 ** 12)) == [] and r.totals()["live"] == 0
    with pytest.raises(errors.SealedError):
        with core.records.mutation("job1"):
            pass


def test_archive_a_crashed_job(core):
    core.create_job("job1", 1, 1)
    populate(core, "job1")
    core.transition("job1", JobState.CRASHED, "owner gone")
    assert core.tree.exists("quarantine", "job1") and not core.tree.exists("jobs", "job1")
    assert_receipt_valid(core, "job1")
    core.write_state("job1", b"archived")
    assert not core.tree.exists("quarantine", "job1")
    assert stored(core, "job1").state == "archived"


@pytest.mark.parametrize("setup, command, code", [
    ([], b"archived", errno.EPERM),
    ([b"completed"], b"failed", errno.EPERM),
    ([b"completed"], b"completed", errno.EPERM),
    ([b"completed"], b"cancelled why", errno.EPERM),
    ([b"failed"], b"cancelled", errno.EPERM),
    ([b"cancelled"], b"completed", errno.EPERM),
    ([b"completed", b"archived"], b"archived", errno.EPERM),
    ([b"completed", b"archived"], b"completed", errno.EPERM),
    ([b"completed"], b"stage late", errno.EPERM),
    ([b"failed"], b"owner SELF", errno.EPERM),
    ([b"completed", b"archived"], b"stage x", errno.EPERM),
    ([], b"bogus", errno.EINVAL),
    ([], b"", errno.EINVAL),
    ([], b"   \n", errno.EINVAL),
    ([], b"x" * 5000, errno.EINVAL),
    ([], b"\xff\xfe", errno.EINVAL),
    ([], b"owner 0", errno.EINVAL),
    ([], b"owner -1", errno.EINVAL),
    ([], b"owner abc", errno.EINVAL),
    ([], f"owner {NO_SUCH_PID}".encode(), errno.EINVAL),
    ([], b"stage", errno.EINVAL),
    ([], b"archived now", errno.EINVAL),
    ([], b"failed a\nb", errno.EINVAL),
    ([b"completed"], b"bogus", errno.EINVAL),
])
def test_rejected_writes_change_nothing_and_are_recorded(core, setup, command, code):
    core.create_job("job1", 1, 1)
    populate(core, "job1")
    for word in setup:
        core.write_state("job1", word)
    command = command.replace(b"SELF", str(os.getpid()).encode())
    before = stored(core, "job1")
    manifest_before = core.manifest_entries("job1")
    files_before = tree_files(core, "job1") if before.where else None
    with pytest.raises(errors.WsfsError) as info:
        core.write_state("job1", command)
    assert info.value.errno == code
    assert stored(core, "job1") == before and core.records.get("job1") == before
    assert core.manifest_entries("job1") == manifest_before
    if files_before is not None:
        assert tree_files(core, "job1") == files_before
    [rejected] = events(core, "rejected")
    assert rejected["job"] == "job1" and rejected["via"] == ".state"
    assert rejected["errno"] == errno.errorcode[code]
    assert rejected["reason"] == str(info.value) and rejected["reason"]
    assert rejected["command"] == command[:200].decode("utf-8", "replace").strip()
    with core.store.read() as r:
        assert r.meta("counters")["rejected_writes"] == 1


def test_transition_rules(core):
    core.create_job("job1", 1, 1)
    with pytest.raises(errors.NoSuchJobError) as info:
        core.transition("nope", JobState.COMPLETED)
    assert info.value.errno == errno.ENOENT
    with pytest.raises(errors.InvalidTransitionError):
        core.transition("job1", JobState.RUNNING)
    core.write_state("job1", b"failed")
    with pytest.raises(errors.NotAllowedError) as info:
        core.transition("job1", JobState.RUNNING)   # allowed by the table, but only through resume
    assert info.value.errno == errno.EPERM
    with pytest.raises(errors.NoSuchJobError):
        core.write_state("nope", b"completed")


def test_a_job_already_ending_refuses_another_transition(core):
    core.create_job("job1", 1, 1)

    def begin(record, w):
        record.pending = {"target": "completed", "reason": None, "at": 0.0, "step": "intent", "from": "running"}
    core.records.update("job1", begin)
    with pytest.raises(errors.SealedError) as info:
        core.write_state("job1", b"failed")
    assert info.value.errno == errno.EPERM
    with pytest.raises(errors.SealedError):
        with core.records.mutation("job1"):
            pass


def test_mutation_while_running(core):
    core.create_job("job1", 1, 1)
    with core.records.mutation("job1") as record:
        assert record.id == "job1"
    with pytest.raises(errors.NoSuchJobError):
        with core.records.mutation("absent"):
            pass


# -- manifest and usage --------------------------------------------------------------------------


class FakeStat:
    def __init__(self, size, ino, mtime_ns=1, nlink=1):
        self.st_size, self.st_ino, self.st_mtime_ns, self.st_nlink = size, ino, mtime_ns, nlink


def usage(core, job):
    core.manifest.flush()
    return tuple(stored(core, job).usage.values())


def paths(core, job):
    return {p: e[0] for p, e in core.manifest_entries(job)}


def test_manifest_put_delete_usage(core):
    core.create_job("j", 1, 1)
    m = core.manifest
    m.put("j", "output/a", FakeStat(10, 1))
    m.put("j", "output/b", FakeStat(20, 2))
    assert usage(core, "j") == (30, 2)
    m.put("j", "output/a", FakeStat(15, 1))     # rewritten: replaces, never adds a file
    assert usage(core, "j") == (35, 2)
    m.delete("j", "output/a")
    assert usage(core, "j") == (20, 1)
    m.delete("j", "output/a")                   # gone already: nothing changes
    m.delete("j", "output/nothing")
    assert usage(core, "j") == (20, 1)
    m.put("j", "output/d/x", FakeStat(1, 3))
    m.put("j", "output/d/e/y", FakeStat(2, 4))
    m.put("j", "output/dd", FakeStat(4, 5))
    m.delete("j", "output/d")                   # a directory removed with what it held
    assert usage(core, "j") == (24, 2)
    assert paths(core, "j") == {"output/b": 20, "output/dd": 4}
    assert stored(core, "j").usage == {"bytes": 24, "files": 2}


def test_manifest_renames(core):
    core.create_job("j", 1, 1)
    m = core.manifest
    m.put("j", "output/x", FakeStat(5, 1))
    m.put("j", "output/y", FakeStat(7, 2))
    m.put("j", "output/d/a", FakeStat(10, 3))
    m.put("j", "output/d/sub/b", FakeStat(20, 4))
    m.put("j", "output/d2", FakeStat(1, 5))
    assert usage(core, "j") == (43, 5)
    m.rename("j", "output/x", "output/x2")            # a file to a new name
    assert usage(core, "j") == (43, 5)
    m.rename("j", "output/d", "output/e")             # a directory, with everything under it
    assert usage(core, "j") == (43, 5)
    assert paths(core, "j") == {"output/x2": 5, "output/y": 7, "output/e/a": 10, "output/e/sub/b": 20,
                                "output/d2": 1}
    m.rename("j", "output/x2", "output/y")            # replaces y
    assert usage(core, "j") == (36, 4)
    assert paths(core, "j") == {"output/y": 5, "output/e/a": 10, "output/e/sub/b": 20, "output/d2": 1}
    m.rename("j", "output/e", "temp/e")               # across areas
    assert paths(core, "j") == {"output/y": 5, "temp/e/a": 10, "temp/e/sub/b": 20, "output/d2": 1}
    assert usage(core, "j") == (36, 4)
    # RENAME_EXCHANGE, as fs.py spells it: through a marker no file can have.
    m.rename("j", "output/y", "\0swap")
    m.rename("j", "output/d2", "output/y")
    m.rename("j", "\0swap", "output/d2")
    assert paths(core, "j") == {"output/y": 1, "output/d2": 5, "temp/e/a": 10, "temp/e/sub/b": 20}
    assert usage(core, "j") == (36, 4)
    m.rename("j", "output/nothing", "output/y")       # a non-file (say a symlink) replacing y
    assert usage(core, "j") == (35, 3)


def test_manifest_batches_several_jobs_and_keeps_totals(core):
    core.create_job("a", 1, 1)
    core.create_job("b", 1, 1)
    core.manifest.put("a", "output/f", FakeStat(100, 1))
    core.manifest.put("b", "output/f", FakeStat(1, 2))
    core.manifest.put("b", "output/g", FakeStat(2, 3))
    core.manifest.flush()
    assert usage(core, "a") == (100, 1) and usage(core, "b") == (3, 2)
    with core.store.read() as r:
        assert r.totals()["bytes"] == 103 and r.totals()["files"] == 3
    assert core.job_document("a")["usage"] == {"bytes": 100, "files": 1}


def test_rebuild_manifest_equals_the_tree(core):
    core.create_job("j", 1, 1)
    write_file(core, "j", "output/hashed", b"keep my hash", stream_sha=True)
    write_file(core, "j", "output/changed", b"v1", stream_sha=True)
    # Files the manifest never heard of, a stale entry and a changed file.
    for rel, data in (("j/input/new", b"new input"), ("j/temp/t", b"t" * 100)):
        fd = core.tree.open("jobs", rel, os.O_WRONLY | os.O_CREAT)
        os.write(fd, data)
        os.close(fd)
    fd = core.tree.open("jobs", "j/output/changed", os.O_WRONLY | os.O_APPEND)
    os.write(fd, b" and v2")
    os.close(fd)
    core.manifest.put("j", "output/stale", FakeStat(999, 12345))
    core.tree.symlink("jobs", "j/output/link", "hashed")
    record = core.recovery.rebuild_manifest("j")
    entries = dict(core.manifest_entries("j"))
    walked = dict(core.tree.walk_files("jobs", "j"))
    assert set(entries) == set(walked) == {"output/hashed", "output/changed", "input/new", "temp/t"}
    for path, file_st in walked.items():
        assert entries[path][:3] == [file_st.st_size, file_st.st_mtime_ns, file_st.st_ino]
    assert entries["output/hashed"][3] == hashlib.sha256(b"keep my hash").digest()   # still valid: kept
    assert entries["output/changed"][3] is None                                      # stale: dropped
    assert record.usage == {"bytes": sum(st.st_size for st in walked.values()), "files": 4}
    assert stored(core, "j").usage == record.usage


# -- resume and recovery ---------------------------------------------------------------------------


def test_resume_a_failed_job(core, clock):
    core.create_job("job1", 1, 1)
    files = populate(core, "job1")
    core.write_state("job1", b"failed disk full")
    clock.advance(60)
    record = core.resume("job1")
    assert record == stored(core, "job1")
    assert record.state == "running" and record.sealed is False and record.reason is None
    assert record.ended is None and record.expires_at is None and record.receipt_sha256 is None
    assert record.history[-1] == {"state": "running", "at": clock.now, "reason": "resumed"}
    assert not core.tree.exists("jobs", f"job1/{RECEIPT_FILE}")
    assert tree_files(core, "job1") == files          # files already produced stay
    with core.store.read() as r:
        assert list(r.due(10 ** 12)) == []
    write_file(core, "job1", "output/after", b"resumed work")
    core.write_state("job1", b"completed")
    assert "output/after" in [o["path"] for o in assert_receipt_valid(core, "job1")["outputs"]]


def test_resume_a_crashed_job_brings_its_tree_back(core):
    core.create_job("job1", 1, 1)
    files = populate(core, "job1")
    core.transition("job1", JobState.CRASHED, "owner gone")
    core.resume("job1")
    assert core.tree.exists("jobs", "job1") and not core.tree.exists("quarantine", "job1")
    assert tree_files(core, "job1") == files
    assert stored(core, "job1").where == "jobs"
    with core.records.mutation("job1"):
        pass


@pytest.mark.parametrize("setup", [[], [b"completed"], [b"cancelled"], [b"completed", b"archived"]])
def test_resume_refused(core, setup):
    core.create_job("job1", 1, 1)
    for word in setup:
        core.write_state("job1", word)
    before = stored(core, "job1")
    with pytest.raises(errors.InvalidTransitionError) as info:
        core.resume("job1")
    assert info.value.errno == errno.EPERM and stored(core, "job1") == before


def test_resume_through_control_checks_the_owner(core):
    core.create_job("job1", 1000, 1000)
    core.write_state("job1", b"failed")
    with pytest.raises(errors.NotAllowedError):
        core.write_control(b"resume job1", uid=2000)
    assert stored(core, "job1").state == "failed"
    core.write_control(b"resume job1", uid=1000)
    assert stored(core, "job1").state == "running"


def reopen(core, data_dir, clock, config=None):
    core.manifest._ops.clear()   # a crash loses the unflushed queue
    core.store.close()
    core.tree.close()
    return make_core(data_dir, clock, config)


@pytest.mark.parametrize("on_crash", ["quarantine", "resume"])
def test_recover_after_a_daemon_crash(tmp_path, clock, on_crash):
    data = tmp_path / "data"
    core = make_core(data, clock, parse_config({"on_crash": on_crash}))
    core.create_job("run", 1, 1)
    core.create_job("done", 1, 1)
    files = populate(core, "run")
    core.write_state("done", b"completed")
    write_file(core, "run", "output/unflushed", b"written just before the crash", flush=False)
    files["output/unflushed"] = b"written just before the crash"
    core = reopen(core, data, clock, parse_config({"on_crash": on_crash}))
    try:
        assert core.recovery.recover(unclean=True) == []
        record = stored(core, "run")
        assert set(dict(core.manifest_entries("run"))) == set(files)   # rebuilt from the tree
        if on_crash == "quarantine":
            assert record.state == "crashed" and record.reason == "the wsfs daemon crashed"
            assert core.tree.exists("quarantine", "run") and not core.tree.exists("jobs", "run")
            assert_receipt_valid(core, "run")
        else:
            assert record.state == "running" and core.tree.exists("jobs", "run")
        assert tree_files(core, "run") == files
        assert record.usage == {"bytes": sum(map(len, files.values())), "files": len(files)}
        assert stored(core, "done").state == "completed"
    finally:
        core.store.close()
        core.tree.close()


# -- crash-safe ending (docs/spec.md §6) -------------------------------------------------------------------


class Crash(Exception):
    """The daemon dies here."""


def crash_after(core, monkeypatch, step: str):
    def fault_point(name):
        if name == step:
            raise Crash(step)
    monkeypatch.setattr(core, "_fault_point", fault_point)


def crash_inside(core, monkeypatch, step: str):
    """Die inside ``step``: its tree work done, its record update not committed."""
    real = core._set_step

    def set_step(job_id, name, extra=None):
        if name == step:
            raise Crash(step)
        return real(job_id, name, extra)
    monkeypatch.setattr(core, "_set_step", set_step)


def scenario(data_dir, clock, monkeypatch, target: str, crash=None, step=None):
    """Create, fill and end a job (crashing where told), then recover; return the reopened core."""
    core = make_core(data_dir, clock)
    core.create_job("job1", 1000, 1000)
    populate(core, "job1")
    core.write_state("job1", b"stage work")
    clock.advance(120)
    if target == "archived":
        core.write_state("job1", b"failed broke")
        clock.advance(30)
    if crash is not None:
        crash(core, monkeypatch, step)
    command = {"completed": b"completed", "failed": b"failed broke", "cancelled": b"cancelled",
               "archived": b"archived"}.get(target)
    try:
        if target == "crashed":   # what the sweeper does when the owner is gone
            core.transition("job1", JobState.CRASHED, "owner gone")
        else:
            core.write_state("job1", command)
    except Crash:
        assert crash is not None
    else:
        assert crash is None, "the crash point was never reached"
    monkeypatch.undo()
    core = reopen(core, data_dir, clock)
    core.recovery.recover(unclean=True)
    return core


def comparable(core) -> dict:
    record = stored(core, "job1").to_stored()
    for key in ("receipt_sha256",):   # covers mtimes through the manifest digest: checked separately
        record.pop(key)
    out = {"record": record, "pending": None, "transitions": None, "files": None, "receipt": None, "manifest": None}
    with core.store.read() as r:
        out["pending"] = r.pending_ids()
        out["due"] = list(r.due(10 ** 12))
        out["transitions"] = [(e["from"], e["to"]) for e in r.events() if e["kind"] == "transition"]
    if record["where"]:
        out["files"] = tree_files(core, "job1")
        receipt = assert_receipt_valid(core, "job1")
        receipt.pop("manifest_sha256")
        out["receipt"] = receipt
        out["temp"] = core.tree.exists(record["where"], "job1/temp")
        out["tmp_file"] = core.tree.exists(record["where"], f"job1/{RECEIPT_FILE}.tmp")
    else:
        out["exists"] = [core.tree.exists(root, "job1") for root in ("jobs", "quarantine")]
    out["manifest"] = [(p, e[0], e[3]) for p, e in core.manifest_entries("job1")]
    return out


CRASH_CASES = (
    [("completed", crash_after, s) for s in ENDING_STEPS[:-1]]
    + [("failed", crash_after, s) for s in ENDING_STEPS[:-1]]
    + [("cancelled", crash_after, s) for s in ("intent", "receipt")]
    + [("archived", crash_after, s) for s in ARCHIVE_STEPS[:-1]]
    + [("crashed", crash_after, s) for s in CRASH_STEPS[:-1]]
    + [("completed", crash_inside, s) for s in ("scratch", "sealed", "receipt")]
    + [("archived", crash_inside, "tree")]
    + [("crashed", crash_inside, "quarantine")]
)


@pytest.mark.parametrize("target, crash, step", CRASH_CASES,
                         ids=[f"{t}-{c.__name__}-{s}" for t, c, s in CRASH_CASES])
def test_an_interrupted_ending_is_finished_by_recovery(tmp_path, monkeypatch, target, crash, step):
    clock_a, clock_b = FakeClock(), FakeClock()
    reference = scenario(tmp_path / "reference", clock_a, monkeypatch, target)
    crashed = scenario(tmp_path / "crashed", clock_b, monkeypatch, target, crash, step)
    try:
        expected, got = comparable(reference), comparable(crashed)
        assert got == expected
        record = got["record"]
        assert record["state"] == target and record["pending"] is None and got["pending"] == []
        assert got["transitions"][-1][1] == target
        assert record["sealed"] is True
        if target == "completed":
            assert got["temp"] is False
        elif target == "crashed":
            assert record["where"] == "quarantine" and got["temp"] is True
            assert not crashed.tree.exists("jobs", "job1")
        elif target == "archived":
            assert got["exists"] == [False, False] and got["manifest"] == []
        else:
            assert got["temp"] is True
    finally:
        for core in (reference, crashed):
            core.store.close()
            core.tree.close()


def test_recovery_with_nothing_to_do(core):
    core.create_job("job1", 1, 1)
    assert core.recovery.recover(unclean=False) == []
    assert stored(core, "job1").state == "running"


# -- the state machine ----------------------------------------------------------------------------

COMMANDS = [b"completed", b"failed", b"failed some reason", b"cancelled", b"cancelled stop", b"archived",
            b"stage step1", b"owner SELF", f"owner {NO_SUCH_PID}".encode(), b"bogus", b"", b"failed a\nb",
            b"archived x", b"stage", b"resume"]
NAMES = ["a", "b", "d/c", "e/c"]


def expected_outcome(state: str, command: bytes) -> tuple[int | None, str]:
    """(errno or None, new state), from docs/spec.md §4/§5 alone."""
    words = command.split()
    if not words or words[0] not in (b"completed", b"failed", b"cancelled", b"archived", b"stage", b"owner"):
        return errno.EINVAL, state
    if b"\n" in command.strip() or (words[0] == b"archived" and len(words) > 1):
        return errno.EINVAL, state
    if words[0] == b"stage":
        if len(words) != 2:
            return errno.EINVAL, state
        return (None, state) if state == "running" else (errno.EPERM, state)
    if words[0] == b"owner":
        if words[1] != b"SELF":
            return errno.EINVAL, state
        return (None, state) if state == "running" else (errno.EPERM, state)
    target = words[0].decode()
    return (None, target) if (state, target) in SPEC_EDGES else (errno.EPERM, state)


class LifecycleMachine(RuleBasedStateMachine):
    jobs = Bundle("jobs")

    def __init__(self):
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="wsfs-machine-")
        self.data = os.path.join(self.tmp, "data")
        self.clock = FakeClock()
        self.core = make_core(self.data, self.clock)
        self.model: dict[str, dict] = {}
        self.count = 0

    def teardown(self):
        try:
            self.core.store.close()
            self.core.tree.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    @initialize(target=jobs)
    def first_job(self):
        return self.create()

    @rule(target=jobs)
    def create(self):
        job = f"job{self.count}"
        self.count += 1
        self.core.create_job(job, 1000, 1000)
        self.model[job] = {"state": "running", "files": {}}
        return job

    @rule(job=jobs, area=st.sampled_from(["input", "output", "temp"]), name=st.sampled_from(NAMES),
          data=st.binary(max_size=3000), stream_sha=st.booleans())
    def write(self, job, area, name, data, stream_sha):
        model = self.model[job]
        if model["state"] != "running":
            with pytest.raises(errors.SealedError):
                write_file(self.core, job, f"{area}/{name}", data)
            return
        write_file(self.core, job, f"{area}/{name}", data, stream_sha=stream_sha, flush=False)
        model["files"][f"{area}/{name}"] = data

    @rule(job=jobs, pick=st.integers(0, 20))
    def remove(self, job, pick):
        model = self.model[job]
        if model["state"] != "running" or not model["files"]:
            return
        path = sorted(model["files"])[pick % len(model["files"])]
        with self.core.records.mutation(job):
            self.core.tree.unlink("jobs", f"{job}/{path}")
            self.core.manifest.delete(job, path)
        del model["files"][path]

    @rule(job=jobs, pick=st.integers(0, 20), area=st.sampled_from(["input", "output", "temp"]),
          name=st.sampled_from(NAMES))
    def rename(self, job, pick, area, name):
        model = self.model[job]
        if model["state"] != "running" or not model["files"]:
            return
        src = sorted(model["files"])[pick % len(model["files"])]
        dst = f"{area}/{name}"
        if src == dst:
            return
        with self.core.records.mutation(job):
            parent = dst.rsplit("/", 1)[0]
            if not self.core.tree.exists("jobs", f"{job}/{parent}"):
                self.core.tree.mkdir("jobs", f"{job}/{parent}")
            self.core.tree.rename("jobs", f"{job}/{src}", "jobs", f"{job}/{dst}")
            self.core.manifest.rename(job, src, dst)
        model["files"][dst] = model["files"].pop(src)

    @rule(job=jobs, src_area=st.sampled_from(["input", "output", "temp"]),
          dst_area=st.sampled_from(["input", "output", "temp"]))
    def rename_dir(self, job, src_area, dst_area):
        model = self.model[job]
        src, dst = f"{src_area}/d", f"{dst_area}/moved"
        if model["state"] != "running" or not self.core.tree.exists("jobs", f"{job}/{src}"):
            return
        if self.core.tree.exists("jobs", f"{job}/{dst}"):
            return
        with self.core.records.mutation(job):
            self.core.tree.rename("jobs", f"{job}/{src}", "jobs", f"{job}/{dst}")
            self.core.manifest.rename(job, src, dst)
        for path in [p for p in model["files"] if p.startswith(src + "/")]:
            model["files"][dst + path[len(src):]] = model["files"].pop(path)

    @rule(job=jobs, command=st.sampled_from(COMMANDS))
    def state(self, job, command):
        model = self.model[job]
        code, new_state = expected_outcome(model["state"], command)
        command = command.replace(b"SELF", str(os.getpid()).encode())
        if code is None:
            self.core.write_state(job, command)
        else:
            with pytest.raises(errors.WsfsError) as info:
                self.core.write_state(job, command)
            assert info.value.errno == code, (model["state"], command, info.value)
        if new_state == "completed" and model["state"] != "completed":
            model["files"] = {p: d for p, d in model["files"].items() if not p.startswith("temp/")}
        model["state"] = new_state

    @rule(job=jobs)
    def resume(self, job):
        model = self.model[job]
        if (model["state"], "running") in SPEC_EDGES:
            self.core.resume(job)
            model["state"] = "running"
        else:
            with pytest.raises(errors.InvalidTransitionError):
                self.core.resume(job)

    @rule(seconds=st.sampled_from([1, 3600, 8 * 86400]))
    def advance(self, seconds):
        self.clock.advance(seconds)

    @precondition(lambda self: self.count > 0)
    @rule(job=jobs, data=st.binary(max_size=500))
    def daemon_crash(self, job, data):
        """kill -9 with a write still queued, then the next mount's recovery."""
        if self.model[job]["state"] == "running":
            write_file(self.core, job, "output/last", data, flush=False)
            self.model[job]["files"]["output/last"] = data
        self.core = reopen(self.core, self.data, self.clock)
        self.core.recovery.recover(unclean=True)
        for model in self.model.values():
            if model["state"] == "running":
                model["state"] = "crashed"

    @invariant()
    def matches_the_model(self):
        core = self.core
        core.manifest.flush()
        with core.store.read() as r:
            assert r.pending_ids() == []
        for job, model in self.model.items():
            state = model["state"]
            record = stored(core, job)
            assert record.state == state and record.pending is None
            ended = state in ENDED
            # sealed iff ended (an archived job stays sealed: it ended before it was archived)
            assert record.sealed == (state != "running")
            if state == "archived":
                assert record.where is None
                assert not core.tree.exists("jobs", job) and not core.tree.exists("quarantine", job)
                assert core.manifest_entries(job) == []
                continue
            root = "quarantine" if state == "crashed" else "jobs"
            assert record.where == root
            # temp/ absent iff completed
            assert core.tree.exists(root, f"{job}/temp") == (state != "completed")
            # receipt present iff ended
            assert core.tree.exists(root, f"{job}/{RECEIPT_FILE}") == ended
            assert tree_files(core, job) == model["files"]
            entries = core.manifest_entries(job)
            assert {p: e[0] for p, e in entries} == {p: len(d) for p, d in model["files"].items()}
            assert record.usage == {"bytes": sum(map(len, model["files"].values())),
                                       "files": len(model["files"])}
            if ended:
                # receipt hashes equal the files' real sha256 (and the model's bytes)
                receipt = assert_receipt_valid(core, job)
                assert {o["path"]: o["sha256"] for o in receipt["outputs"]} == {
                    p: sha(d) for p, d in model["files"].items() if p.startswith("output/")}
        with core.store.read() as r:
            totals = r.totals()
        live = [j for j, m in self.model.items() if m["state"] != "archived"]
        assert totals["live"] == len(live)
        assert totals["bytes"] == sum(len(d) for j in live for d in self.model[j]["files"].values())


LifecycleMachine.TestCase.settings = settings(
    max_examples=30, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestLifecycleMachine = LifecycleMachine.TestCase


def test_a_late_sha256_fills_its_entry_only_while_the_entry_is_that_file(core):
    """The hasher finishes after the file's close: its sha256 goes into the entry in the queue's
    order, so an unlink or a new write queued before it wins (found by the hypothesis model of
    the operations: an unlinked file came back in the manifest)."""
    core.create_job("j", 0, 0)
    m = core.manifest
    m.put("j", "output/a", FakeStat(5, 1, mtime_ns=10))
    m.hashed("j", "output/a", FakeStat(5, 1, mtime_ns=10), b"\x01" * 32)
    m.put("j", "output/b", FakeStat(3, 2, mtime_ns=10))
    m.delete("j", "output/b")
    m.hashed("j", "output/b", FakeStat(3, 2, mtime_ns=10), b"\x02" * 32)  # too late: b is gone
    m.put("j", "output/c", FakeStat(3, 3, mtime_ns=10))
    m.put("j", "output/c", FakeStat(4, 3, mtime_ns=11))  # written again since
    m.hashed("j", "output/c", FakeStat(3, 3, mtime_ns=10), b"\x03" * 32)
    assert dict(core.manifest_entries("j")) == {"output/a": [5, 10, 1, b"\x01" * 32], "output/c": [4, 11, 3, None]}
    assert core.records.get("j").usage == {"bytes": 9, "files": 2}


def test_a_refresh_at_release_lands_only_on_the_entry_its_file_still_has(core):
    """A file recorded again at its release (RELEASE comes after close() returned) may have been
    renamed meanwhile: the refresh must not bring its old name back (found by the concurrency
    stress suite once passthrough writers were recorded at release)."""
    core.create_job("j", 0, 0)
    m = core.manifest
    m.put("j", "output/a.part", FakeStat(5, 1, mtime_ns=10))
    m.rename("j", "output/a.part", "output/a")
    m.put("j", "output/a.part", FakeStat(6, 1, mtime_ns=11), refresh=True)  # too late: renamed
    m.put("j", "output/b", FakeStat(3, 2, mtime_ns=10))
    m.put("j", "output/b", FakeStat(4, 2, mtime_ns=12), refresh=True)  # still there: updated
    m.put("j", "output/c", FakeStat(1, 3, mtime_ns=10))
    m.delete("j", "output/c")
    m.put("j", "output/c", FakeStat(2, 3, mtime_ns=13), refresh=True)  # unlinked meanwhile
    m.put("j", "output/d", FakeStat(1, 4, mtime_ns=10))
    m.put("j", "output/d", FakeStat(2, 5, mtime_ns=14), refresh=True)  # another file has the name now
    assert dict(core.manifest_entries("j")) == {"output/a": [5, 10, 1, None], "output/b": [4, 12, 2, None],
                                               "output/d": [1, 10, 4, None]}
    assert core.records.get("j").usage == {"bytes": 10, "files": 3}
