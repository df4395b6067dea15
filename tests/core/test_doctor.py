"""``wsfs doctor`` (docs/spec.md §10): the store against the data dir, on data dirs damaged on purpose.

Core tests drive ``wsfs.doctor`` on the ``core`` fixture (no mount); each
damages the data dir behind the store's back, checks the one-line finding,
repairs, and checks that a second diagnosis is clean.  Through a real mount:
``mount/test_doctor_mount.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from wsfs.core import doctor
from wsfs.core.model import JobState


@pytest.fixture(autouse=True)
def _logging_restored(keep_logging):
    """The CLI's ``main`` reconfigures the root logger: conftest's ``keep_logging`` puts it back."""


def data(core) -> Path:
    return Path(core.tree.data_dir)


def make_job(core, job: str, files: dict[str, bytes] | None = None, state: str | None = None) -> dict:
    """A job whose files were written as the mount would (manifest in step), optionally ended."""
    core.create_job(job, os.getuid(), os.getgid())
    for rel, content in (files or {}).items():
        path = data(core) / "jobs" / job / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    core.recovery.rebuild_manifest(job)
    if state:
        core.transition(job, JobState(state), "test")
    return core.records.require(job)


def empty_trash(core) -> None:
    for name in core.tree.listdir("trash", ""):
        assert core.tree.remove_tree("trash", name) == 0


def kinds(findings) -> list[tuple[str, str | None]]:
    return [(f.kind, f.job) for f in findings]


def manifest_paths(core, job: str) -> dict[str, list]:
    return dict(core.manifest_entries(job))


def test_a_healthy_data_dir_is_clean(core, clock):
    make_job(core, "running", {"output/a": b"a", "input/i": b"i"})
    make_job(core, "done", {"output/a": b"a", "temp/t": b"t"}, "completed")
    make_job(core, "broken", {"output/b": b"b"}, "failed")
    make_job(core, "gone", {"output/g": b"g"}, "cancelled")
    core.transition("gone", JobState.ARCHIVED)
    make_job(core, "crash", {"output/c": b"c"}, "crashed")
    empty_trash(core)  # completion and archive put trees there; the daemon empties it
    assert doctor.diagnose(core) == []
    report = doctor.run(core, repair_too=True)
    assert report.clean and report.actions == [] and report.as_dict()["problems"] == 0


def test_tree_deleted_behind_its_back_is_marked_purged(core, clock):
    make_job(core, "run1", {"output/a": b"aaaa"})
    make_job(core, "done1", {"output/a": b"bb"}, "completed")
    empty_trash(core)
    shutil.rmtree(data(core) / "jobs" / "run1")
    shutil.rmtree(data(core) / "jobs" / "done1")
    findings = doctor.diagnose(core)
    assert kinds(findings) == [("missing-tree", "run1"), ("missing-tree", "done1")] or \
        sorted(kinds(findings)) == [("missing-tree", "done1"), ("missing-tree", "run1")]
    lines = {f.job: f.line() for f in findings}
    assert lines["run1"] == "missing-tree: run1: its record (running) says workspaces/run1, and there is no tree"

    clock.advance(60)
    actions = doctor.repair(core, findings)
    assert sorted(actions) == ["done1: tree missing: marked purged",
                               "run1: tree missing: ended crashed and marked purged"]
    run1, done1 = core.records.require("run1"), core.records.require("done1")
    assert run1.state == "crashed" and run1.where is None and run1.purged_at == clock.now
    assert run1.history[-1]["state"] == "crashed" and run1.owner is None
    assert done1.state == "completed" and done1.where is None and done1.purged_at == clock.now
    assert manifest_paths(core, "run1") == {} and manifest_paths(core, "done1") == {}
    with core.store.read() as r:
        assert r.totals()["live"] == 0 and r.totals()["bytes"] == 0
        assert [e["job"] for e in r.events() if e["kind"] == "purged"] in (["run1", "done1"], ["done1", "run1"])
    assert doctor.diagnose(core) == []


def test_orphan_trees_are_adopted_as_crashed_jobs_in_quarantine(core, clock):
    make_job(core, "old", {"output/o": b"o"}, "completed")
    core.transition("old", JobState.ARCHIVED)
    empty_trash(core)
    orphans = {
        ("jobs", "lost"): {"output/result.bin": b"result", "temp/scratch": b"s", "input/in": b"in"},
        ("quarantine", "qlost"): {"output/r": b"r"},
        ("jobs", "bad name!"): {"results/x": b"x"},
        ("jobs", "old"): {"output/again": b"again"},   # the id was used: it gets another
    }
    for (root, name), files in orphans.items():
        for rel, content in files.items():
            path = data(core) / root / name / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
    findings = doctor.diagnose(core)
    assert sorted(f.kind for f in findings) == ["orphan-tree"] * 4
    by_name = {f.name: f for f in findings}
    assert by_name["lost"].line() == "orphan-tree: lost: jobs/lost: a tree without a record (3 files, 9B)"
    assert "its record (archived) has none" in by_name["old"].detail

    clock.advance(10)
    actions = doctor.repair(core, findings)
    assert "jobs/lost: adopted into quarantine/lost as a crashed job, with a receipt" in actions
    assert "jobs/bad name!: adopted as bad_name_ into quarantine/bad_name_ as a crashed job, with a receipt" in actions
    assert "jobs/old: adopted as old.orphan into quarantine/old.orphan as a crashed job, with a receipt" in actions

    lost = core.records.require("lost")
    assert lost.state == "crashed" and lost.where == "quarantine" and lost.sealed
    assert lost.template == "default"  # its areas are exactly the default template's
    assert lost.expires_at == clock.now + 7 * 86400  # crashed retention applies
    assert not (data(core) / "jobs" / "lost").exists()
    receipt = json.loads((data(core) / "quarantine" / "lost" / "receipt.json").read_text())
    assert receipt["state"] == "crashed" and receipt["job"] == "lost"
    assert receipt["outputs"] == [{"path": "output/result.bin", "size": 6,
                                   "sha256": hashlib.sha256(b"result").hexdigest()}]
    assert sorted(manifest_paths(core, "lost")) == ["input/in", "output/result.bin", "temp/scratch"]
    assert core.records.require("qlost").where == "quarantine"
    odd = core.records.require("bad_name_")
    assert odd.areas == {"results": "keep"} and odd.template == doctor.ADOPTED_TEMPLATE
    assert json.loads((data(core) / "quarantine" / "bad_name_" / "receipt.json").read_text())["outputs"][0][
        "path"] == "results/x"
    assert core.records.require("old").state == "archived"  # the old record is untouched
    assert (data(core) / "quarantine" / "old.orphan" / "output" / "again").read_bytes() == b"again"
    assert doctor.diagnose(core) == []


def test_a_manifest_that_disagrees_with_the_files_is_rebuilt(core, clock):
    make_job(core, "j", {"output/keep": b"k", "output/grow": b"g", "output/del": b"d"})
    job_dir = data(core) / "jobs" / "j"
    (job_dir / "output" / "new").write_bytes(b"new!")
    (job_dir / "output" / "grow").write_bytes(b"grown")
    (job_dir / "output" / "del").unlink()
    findings = doctor.diagnose(core)
    assert kinds(findings) == [("manifest", "j")]
    assert findings[0].detail == ("1 file not in the manifest (output/new); 1 file in the manifest but gone "
                                  "(output/del); 1 file changed since the manifest saw them (output/grow)")
    actions = doctor.repair(core, findings)
    assert actions == ["j: rebuilt the manifest from the files (3 files, 10 bytes)"]
    assert sorted(manifest_paths(core, "j")) == ["output/grow", "output/keep", "output/new"]
    assert core.records.require("j").usage == {"bytes": 10, "files": 3}
    assert doctor.diagnose(core) == []


def test_a_new_mtime_alone_is_a_difference(core):
    make_job(core, "j", {"output/a": b"a"})
    os.utime(data(core) / "jobs" / "j" / "output" / "a", ns=(1, 1_000_000_000))
    assert doctor.diagnose(core)[0].detail == "1 file changed since the manifest saw them (output/a)"


def test_usage_that_disagrees_with_the_manifest(core):
    make_job(core, "j", {"output/a": b"abc"})

    def skew(record, w):
        record.usage = {"bytes": 999, "files": 7}
    core.records.update("j", skew)
    findings = doctor.diagnose(core)
    assert findings[0].detail == "usage says 999 bytes in 7 files, the manifest 3 bytes in 1 files"
    doctor.repair(core, findings)
    assert core.records.require("j").usage == {"bytes": 3, "files": 1}
    assert doctor.diagnose(core) == []


def test_trash_not_yet_emptied_is_deleted(core):
    make_job(core, "j", {"output/a": b"a", "temp/t": b"tt"}, "completed")
    trash = core.tree.listdir("trash", "")
    assert len(trash) == 1 and trash[0].startswith("j.temp.")
    (data(core) / "trash" / "leftover").mkdir()
    (data(core) / "trash" / "leftover" / "f").write_bytes(b"12345")
    findings = doctor.diagnose(core)
    assert sorted(f.kind for f in findings) == ["trash", "trash"]
    assert "trash: trash/leftover: not deleted yet (1 file, 5B)" in [f.line() for f in findings]
    actions = doctor.repair(core, findings)
    assert sorted(actions) == sorted([f"trash/{trash[0]}: deleted", "trash/leftover: deleted"])
    assert core.tree.listdir("trash", "") == []
    assert doctor.diagnose(core) == []


def test_a_tree_in_the_wrong_root_goes_back_where_its_record_says(core):
    make_job(core, "c", {"output/a": b"a"}, "crashed")
    assert core.records.require("c").where == "quarantine"
    # A resume that died between its rename and its commit:
    os.rename(data(core) / "quarantine" / "c", data(core) / "jobs" / "c")
    findings = doctor.diagnose(core)
    assert [f.line() for f in findings] == ["misplaced-tree: c: its tree is in workspaces/c, its record (crashed) "
                                            "says quarantine/"]
    assert doctor.repair(core, findings) == ["c: moved its tree from workspaces/ back to quarantine/, "
                                             "where its record says"]
    assert (data(core) / "quarantine" / "c" / "output" / "a").exists()
    assert doctor.diagnose(core) == []


def test_stray_files_and_symlinks_are_removed_without_following(core, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    (data(core) / "jobs" / "note.txt").write_text("x")
    os.symlink(outside, data(core) / "quarantine" / "link")
    findings = doctor.diagnose(core)
    assert sorted(f.line() for f in findings) == [
        "stray: jobs/note.txt: not a job tree (not a directory)",
        "stray: quarantine/link: not a job tree (a symlink)"]
    assert sorted(doctor.repair(core, findings)) == ["jobs/note.txt: removed", "quarantine/link: removed"]
    assert (outside / "precious").read_text() == "keep me"
    assert doctor.diagnose(core) == []


def test_an_interrupted_transition_is_reported_and_finished_without_a_daemon(core, clock):
    make_job(core, "p", {"output/a": b"a", "temp/t": b"t"})

    def begin(record, w):
        record.pending = {"target": "completed", "reason": None, "at": clock.now, "step": "intent",
                             "from": "running"}
    core.records.update("p", begin)
    assert doctor.diagnose(core, live=True) == []  # live: a transition in flight is not damage
    findings = doctor.diagnose(core)
    assert [f.line() for f in findings] == ["pending: p: its transition to completed stopped after step intent "
                                            "(the next mount finishes it)"]
    assert doctor.repair(core, findings) == ["p: finished its interrupted transition"]
    assert core.records.require("p").state == "completed"
    assert (data(core) / "jobs" / "p" / "receipt.json").exists()
    empty_trash(core)
    assert doctor.diagnose(core) == []


def test_live_diagnosis_skips_manifests_of_jobs_with_open_files(core):
    make_job(core, "busy", {"output/a": b"a"})
    (data(core) / "jobs" / "busy" / "output" / "being-written").write_bytes(b"partial")
    assert doctor.diagnose(core, live=True, busy={"busy"}) == []
    assert kinds(doctor.diagnose(core, live=True)) == [("manifest", "busy")]
    findings = doctor.diagnose(core, live=True)
    assert doctor.repair(core, findings, live=True, busy={"busy"}) == ["busy: changed meanwhile, manifest left alone"]


def test_stale_reader_slots_are_found_and_freed(core):
    """A process that died inside a read transaction leaves its LMDB reader slot behind."""
    script = (
        "import lmdb, sys\n"
        f"env = lmdb.open({core.store.path!r}, max_dbs=16, subdir=True)\n"
        "txn = env.begin()\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    findings = doctor.diagnose(core)
    assert [f.kind for f in findings] == ["stale-readers"]
    assert f"(pid {proc.pid})" in findings[0].detail
    assert doctor.repair(core, findings) == ["freed 1 stale LMDB reader slot(s)"]
    assert doctor.diagnose(core) == []


def test_repairs_in_one_run_and_the_report(core, clock):
    make_job(core, "a", {"output/x": b"x"})
    shutil.rmtree(data(core) / "jobs" / "a")
    (data(core) / "jobs" / "orphan" / "output").mkdir(parents=True)
    report = doctor.run(core, repair_too=True)
    body = report.as_dict()
    assert body["problems"] == 2 and body["counts"] == {"missing-tree": 1, "orphan-tree": 1}
    assert body["remaining"] == 0 and len(body["actions"]) == 2 and body["repair"] is True
    assert {f["kind"] for f in body["findings"]} == {"missing-tree", "orphan-tree"}
    json.dumps(body)  # it goes into an event as it is


# -- through a real mount ---------------------------------------------------------------------------------


def test_hidden_names_left_in_ended_and_quarantined_jobs_are_found_and_removed(core):
    """What libfuse 3.14's RELEASE/UNLINK race left behind before wsfs removed such names itself."""
    make_job(core, "ended", {"output/kept": b"result"}, state="completed")
    make_job(core, "crashed", {"output/a": b"a"}, state="crashed")
    empty_trash(core)  # the scratch areas the endings moved there
    leftovers = [data(core) / "jobs" / "ended" / "output" / ".fuse_hidden0000000100000001",
                 data(core) / "quarantine" / "crashed" / "output" / ".fuse_hidden0000000200000002"]
    for path in leftovers:
        path.write_bytes(b"j" * 4096)
    findings = doctor.diagnose(core)
    assert sorted((f.kind, f.job) for f in findings) == [("hidden", "crashed"), ("hidden", "ended")]
    assert "1 hidden name(s)" in findings[0].detail
    actions = doctor.repair(core, findings)
    assert actions == ["crashed: removed 1 hidden name(s) of files unlinked while open",
                       "ended: removed 1 hidden name(s) of files unlinked while open"]
    assert not any(p.exists() for p in leftovers)
    assert (data(core) / "jobs" / "ended" / "output" / "kept").read_bytes() == b"result"
    assert doctor.diagnose(core) == []


def test_recovery_after_a_crash_removes_hidden_names_of_running_jobs(core):
    make_job(core, "run", {"temp/x": b"x"})
    left = data(core) / "jobs" / "run" / "temp" / ".fuse_hidden0000000300000003"
    left.write_bytes(b"journal")
    core.recovery.recover(unclean=True)
    assert not left.exists()
    assert core.records.require("run").usage == {"bytes": 1, "files": 1}
