"""Retention, owner liveness and crash recovery in the core (docs/spec.md §4, §7).

No mount and no sleeping: a ``FakeClock`` moves days in microseconds, and
``Sweeper(service).sweep(now)`` is called directly.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, events, make_core, parse_toml_config

from wsfs.core.lifecycle import RECEIPT_FILE
from wsfs.core.model import JobState
from wsfs.core.retention import Sweeper, owner_alive
from wsfs.core.store import Reader

DAY, HOUR = 86400.0, 3600.0


# -- helpers ---------------------------------------------------------------------------


def data_dir(core) -> Path:
    return Path(core.tree.data_dir)


def new_job(core, job: str, files: dict[str, bytes] | None = None, **create) -> dict:
    """A running job with ``files`` (AREA/path -> bytes) written into its tree and manifest."""
    core.create_job(job, 0, 0, **create)
    for rel, data in (files or {"output/result.txt": b"result\n"}).items():
        path = data_dir(core) / "jobs" / job / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return core.recovery.rebuild_manifest(job)


def ended_job(core, job: str, state: JobState, files=None, **create) -> dict:
    new_job(core, job, files, **create)
    return core.transition(job, state, "test" if state != JobState.COMPLETED else None)


def actions(report) -> list[tuple[str, str]]:
    return [(a.job, a.action) for a in report.actions]


def snapshot(core) -> dict:
    """Everything a sweep could change: records, the expiry index, every path in the data dir."""
    with core.store.read() as r:
        records = sorted(r.jobs(), key=lambda rec: rec.id)
        due = list(r.due(1e12))
        owners = r.owners()
    paths = sorted(str(p.relative_to(data_dir(core))) for p in data_dir(core).rglob("*")
                   if p.parts[len(data_dir(core).parts)] != "store")
    return {"records": records, "expiry": due, "owners": owners, "paths": paths}


@pytest.fixture
def sweeper(core, monkeypatch):
    """A sweeper that sees no busy trees unless a test says so (psutil's view is tested on its own)."""
    monkeypatch.setattr(Sweeper, "_busy_jobs", lambda self: set(self.open_jobs()))
    return Sweeper(core)


# -- when jobs expire -------------------------------------------------------------------


def test_failed_job_is_hidden_exactly_after_7_days(core, clock, sweeper):
    ended = ended_job(core, "f1", JobState.FAILED)
    assert ended.expires_at == ended.ended + 7 * DAY

    clock.advance(7 * DAY - 1)
    assert actions(sweeper.sweep(clock())) == []
    assert core.records.get("f1").hidden is False

    clock.advance(1)
    report = sweeper.sweep(clock())
    assert actions(report) == [("f1", "hide")]
    assert report.actions[0].done
    record = core.records.get("f1")
    assert record.hidden is True and record.where == "jobs"
    assert record.expires_at == clock() + DAY  # the default grace
    assert (data_dir(core) / "jobs" / "f1" / "output" / "result.txt").read_bytes() == b"result\n"
    (hidden,) = events(core, "hidden", "f1")
    assert hidden["purge_at"] == clock() + DAY


def test_cancelled_after_24_hours(core, clock, sweeper):
    ended_job(core, "c1", JobState.CANCELLED)
    clock.advance(DAY - 1)
    assert actions(sweeper.sweep(clock())) == []
    clock.advance(1)
    assert actions(sweeper.sweep(clock())) == [("c1", "hide")]


def test_crashed_after_7_days(core, clock, sweeper):
    ended_job(core, "x1", JobState.CRASHED)
    assert core.records.get("x1").where == "quarantine"
    clock.advance(7 * DAY - 1)
    assert actions(sweeper.sweep(clock())) == []
    clock.advance(1)
    assert actions(sweeper.sweep(clock())) == [("x1", "hide")]
    clock.advance(DAY)
    assert actions(sweeper.sweep(clock())) == [("x1", "purge")]
    assert not (data_dir(core) / "quarantine" / "x1").exists()


def test_completed_never_expires(core, clock, sweeper):
    ended_job(core, "ok", JobState.COMPLETED)
    assert core.records.get("ok").expires_at is None
    clock.advance(3650 * DAY)
    assert actions(sweeper.sweep(clock())) == []
    assert core.records.get("ok").hidden is False
    with core.store.read() as r:
        assert list(r.due(clock() + 1e9)) == []


def test_running_job_never_expires(core, clock, sweeper):
    new_job(core, "r1")
    clock.advance(3650 * DAY)
    assert actions(sweeper.sweep(clock())) == []


# -- purge ---------------------------------------------------------------------------------


def test_purge_after_the_grace_keeps_the_record_and_moves_the_tree_to_trash(core, clock, sweeper):
    ended_job(core, "p1", JobState.FAILED)
    clock.advance(7 * DAY)
    assert actions(sweeper.sweep(clock())) == [("p1", "hide")]

    clock.advance(DAY - 1)
    assert actions(sweeper.sweep(clock())) == []
    assert (data_dir(core) / "jobs" / "p1").is_dir()

    clock.advance(1)
    report = sweeper.sweep(clock())
    assert actions(report) == [("p1", "purge")]
    assert report.actions[0].done

    record = core.records.get("p1")
    assert record is not None and record.state == "failed"
    assert record.purged_at == clock()
    assert record.where is None and record.expires_at is None
    assert not (data_dir(core) / "jobs" / "p1").exists()
    trash = [p.name for p in (data_dir(core) / "trash").iterdir()]
    assert [n for n in trash if n.startswith("p1.purged.")], trash
    assert core.manifest_entries("p1") == []
    (purged,) = events(core, "purged", "p1")
    assert purged["state"] == "failed"
    # The record stays, so the id stays used (docs/spec.md §3) and nothing is due any more.
    with core.store.read() as r:
        assert list(r.due(clock() + 1e9)) == []
        assert r.totals()["live"] == 0
    clock.advance(365 * DAY)
    assert actions(sweeper.sweep(clock())) == []


def test_grace_0_purges_at_expiry(tmp_path, clock, monkeypatch):
    monkeypatch.setattr(Sweeper, "_busy_jobs", lambda self: set())
    core = make_core(tmp_path / "data", clock, parse_toml_config('[retention]\ngrace = "0s"\n'))
    try:
        ended_job(core, "g0", JobState.FAILED)
        clock.advance(7 * DAY - 1)
        assert actions(Sweeper(core).sweep(clock())) == []
        clock.advance(1)
        report = Sweeper(core).sweep(clock())
        assert actions(report) == [("g0", "hide"), ("g0", "purge")]
        assert all(a.done for a in report.actions)
        assert "grace" in report.actions[1].why
        assert core.records.get("g0").purged_at == clock()
        assert not (tmp_path / "data" / "jobs" / "g0").exists()
    finally:
        core.store.close()
        core.tree.close()


MEDIA_CONFIG = """
[retention]
grace = "12h"

[templates.media]
areas = { audio = "scratch", video = "scratch", output = "keep" }
[templates.media.retention]
failed = "3d"
cancelled = "never"
grace = "1h"
"""


def test_per_template_retention_overrides_the_default(tmp_path, clock, monkeypatch):
    monkeypatch.setattr(Sweeper, "_busy_jobs", lambda self: set())
    core = make_core(tmp_path / "data", clock, parse_toml_config(MEDIA_CONFIG))
    try:
        sweeper = Sweeper(core)
        ended_job(core, "plain", JobState.FAILED)
        ended_job(core, "media", JobState.FAILED, {"output/o": b"o", "audio/a": b"a"}, template="media")
        ended_job(core, "media-c", JobState.CANCELLED, {"output/o": b"o"}, template="media")

        clock.advance(3 * DAY - 1)
        assert actions(sweeper.sweep(clock())) == []
        clock.advance(1)
        report = sweeper.sweep(clock())
        assert actions(report) == [("media", "hide")]
        assert "policy failed=3d" in report.actions[0].why and "grace 1h" in report.actions[0].why
        assert core.records.get("media").expires_at == clock() + HOUR

        clock.advance(HOUR)
        assert actions(sweeper.sweep(clock())) == [("media", "purge")]

        clock.advance(4 * DAY - HOUR)  # 7 days after the end: the default policy
        assert actions(sweeper.sweep(clock())) == [("plain", "hide")]
        assert core.records.get("plain").expires_at == clock() + 12 * HOUR  # the top-level grace
        clock.advance(365 * DAY)
        assert ("media-c", "hide") not in actions(sweeper.sweep(clock()))
        assert core.records.get("media-c").hidden is False
    finally:
        core.store.close()
        core.tree.close()


# -- dry run -------------------------------------------------------------------------------


def test_dry_run_changes_nothing_and_reports_the_same_actions_with_why(core, clock, sweeper):
    ended_job(core, "d-failed", JobState.FAILED)
    ended_job(core, "d-cancelled", JobState.CANCELLED)
    ended_job(core, "d-hidden", JobState.FAILED)
    clock.advance(7 * DAY)
    sweeper.sweep(clock())          # all three hidden
    core.restore("d-failed")        # two stay hidden, due for purge a day later
    core.restore("d-cancelled")
    clock.advance(DAY)              # d-cancelled due again (24 h), d-hidden due for purge, d-failed not
    assert core.records.get("d-hidden").hidden

    before = snapshot(core)
    events_before = events(core)
    dry = sweeper.sweep(clock(), dry_run=True)
    assert snapshot(core) == before
    new_events = events(core)[len(events_before):]
    assert [e["kind"] for e in new_events] == ["sweep"] and new_events[0]["dry_run"] is True
    assert new_events[0]["actions"] == [a.as_dict() for a in dry.actions]
    assert sweeper.last is None or sweeper.last["dry_run"] is False  # status shows real passes only
    assert not any(a.done for a in dry.actions)

    by_job = {a.job: a for a in dry.actions}
    assert set(by_job) == {"d-cancelled", "d-hidden"}
    hide, purge = by_job["d-cancelled"], by_job["d-hidden"]
    assert (hide.action, purge.action) == ("hide", "purge")
    # why names the state, its age and the policy
    assert "cancelled for 8d" in hide.why and "policy cancelled=1d" in hide.why
    assert "failed" in purge.why and "8d" in purge.why and "grace 1d" in purge.why

    real = sweeper.sweep(clock())
    assert [(a.job, a.action, a.why) for a in real.actions] == [(a.job, a.action, a.why) for a in dry.actions]
    assert all(a.done for a in real.actions)
    assert core.records.get("d-cancelled").hidden and core.records.get("d-hidden").purged_at == clock()


# -- restore -------------------------------------------------------------------------------


def test_restore_gives_a_fresh_retention_period(core, clock, sweeper):
    ended_job(core, "r1", JobState.FAILED)
    clock.advance(7 * DAY)
    sweeper.sweep(clock())
    assert core.records.get("r1").hidden

    clock.advance(DAY - 5)  # 5 s before the purge
    restored = core.restore("r1")
    assert restored.hidden is False and restored.where == "jobs"
    assert restored.expires_at == clock() + 7 * DAY
    assert (data_dir(core) / "jobs" / "r1" / "output" / "result.txt").exists()
    assert events(core, "restored", "r1")

    clock.advance(5)  # the old purge time: nothing happens
    assert actions(sweeper.sweep(clock())) == []
    clock.advance(7 * DAY - 6)
    assert actions(sweeper.sweep(clock())) == []
    clock.advance(1)
    assert actions(sweeper.sweep(clock())) == [("r1", "hide")]


def test_restore_refuses_a_visible_or_purged_job(core, clock, sweeper):
    from wsfs.core.errors import NotAllowedError

    ended_job(core, "v1", JobState.FAILED)
    with pytest.raises(NotAllowedError):
        core.restore("v1")
    clock.advance(7 * DAY)
    sweeper.sweep(clock())
    clock.advance(DAY)
    sweeper.sweep(clock())
    assert core.records.get("v1").purged_at
    with pytest.raises(NotAllowedError):
        core.restore("v1")


# -- busy trees ------------------------------------------------------------------------------


def test_busy_tree_is_skipped_and_purged_on_a_later_sweep(core, clock):
    busy = {"b1"}
    sweeper = Sweeper(core, open_jobs=lambda: busy)
    ended_job(core, "b1", JobState.FAILED)
    clock.advance(7 * DAY)
    sweeper.sweep(clock())  # hide: a busy tree may be hidden, never purged
    assert core.records.get("b1").hidden
    clock.advance(DAY)

    report = sweeper.sweep(clock())
    assert actions(report) == [("b1", "skip")]
    assert "open" in report.actions[0].why
    assert (data_dir(core) / "jobs" / "b1").is_dir()
    assert core.records.get("b1").purged_at is None
    assert events(core, "skipped", "b1")

    busy.clear()
    clock.advance(60)
    assert actions(sweeper.sweep(clock())) == [("b1", "purge")]
    assert not (data_dir(core) / "jobs" / "b1").exists()


def test_busy_jobs_sees_files_and_cwds_held_by_processes(core, clock):
    """The real psutil check: an open file of this process, the cwd of a child."""
    ended_job(core, "held", JobState.FAILED)
    ended_job(core, "cwd", JobState.FAILED)
    ended_job(core, "free", JobState.FAILED)
    sweeper = Sweeper(core)
    holder = open(data_dir(core) / "jobs" / "held" / "output" / "result.txt", "rb")
    child = subprocess.Popen(["sleep", "60"], cwd=data_dir(core) / "jobs" / "cwd" / "output")
    try:
        assert {"held", "cwd"} <= sweeper._busy_jobs()
        assert "free" not in sweeper._busy_jobs()
        clock.advance(7 * DAY)
        sweeper.sweep(clock())
        clock.advance(DAY)
        assert sorted(actions(sweeper.sweep(clock()))) == [("cwd", "skip"), ("free", "purge"), ("held", "skip")]
    finally:
        holder.close()
        child.kill()
        child.wait()
    assert sorted(actions(sweeper.sweep(clock()))) == [("cwd", "purge"), ("held", "purge")]


# -- the sweep's cost is O(due) -----------------------------------------------------------------


def test_sweep_reads_only_the_due_jobs(core, clock, sweeper, monkeypatch):
    template = core.config.template("default")
    far = clock() + 100 * 365 * DAY
    with core.store.write() as w:
        for i in range(2000):
            record = core.new_record(f"bulk{i:05d}", template, 0, 0, clock(), None, None)
            record.state, record.sealed, record.ended, record.expires_at = JobState.FAILED, True, clock(), far
            w.put_job(record)
    for job in ("due1", "due2", "due3"):
        ended_job(core, job, JobState.FAILED)
    clock.advance(7 * DAY)

    looked_at: list[str] = []
    real_get, real_job = type(core.records).get, Reader.job
    monkeypatch.setattr(type(core.records), "get",
                        lambda self, job_id: (looked_at.append(job_id), real_get(self, job_id))[1])
    monkeypatch.setattr(Reader, "job", lambda self, job_id: (looked_at.append(job_id), real_job(self, job_id))[1])

    def no_scan(self):
        raise AssertionError("the sweep scanned every job")
    monkeypatch.setattr(Reader, "jobs", no_scan)
    monkeypatch.setattr(Reader, "job_ids", no_scan)

    entries_read = [0]
    real_init = Reader.__init__

    def counting_init(self, store, txn):
        real_init(self, store, _CountingTxn(txn, entries_read))
    monkeypatch.setattr(Reader, "__init__", counting_init)

    report = sweeper.sweep(clock())
    assert actions(report) == [("due1", "hide"), ("due2", "hide"), ("due3", "hide")]
    assert set(looked_at) == {"due1", "due2", "due3"}
    assert entries_read[0] <= 10, f"the sweep walked {entries_read[0]} index entries for 3 due jobs"

    looked_at.clear()
    entries_read[0] = 0
    assert actions(sweeper.sweep(clock())) == []
    assert looked_at == [] and entries_read[0] <= 2


class _CountingTxn:
    """An LMDB transaction whose cursors count the entries they hand out."""

    def __init__(self, txn, counter):
        self._txn, self._counter = txn, counter

    def __getattr__(self, name):
        return getattr(self._txn, name)

    def cursor(self, db=None):
        return _CountingCursor(self._txn.cursor(db=db), self._counter)


class _CountingCursor:
    def __init__(self, cursor, counter):
        self._cursor, self._counter = cursor, counter

    def __getattr__(self, name):
        return getattr(self._cursor, name)

    def __enter__(self):
        self._cursor.__enter__()
        return self

    def __exit__(self, *exc):
        return self._cursor.__exit__(*exc)

    def _count(self, items):
        for item in items:
            self._counter[0] += 1
            yield item

    def __iter__(self):
        return self._count(iter(self._cursor))

    def iternext(self, *args, **kwargs):
        return self._count(self._cursor.iternext(*args, **kwargs))

    def iterprev(self, *args, **kwargs):
        return self._count(self._cursor.iterprev(*args, **kwargs))


# -- owner liveness ------------------------------------------------------------------------------


def test_owner_alive_checks_pid_and_create_time():
    import psutil

    me = psutil.Process()
    assert owner_alive({"pid": me.pid, "create_time": me.create_time()})
    assert not owner_alive({"pid": me.pid, "create_time": me.create_time() - 1000})
    child = subprocess.Popen(["true"])
    pid = child.pid
    child.wait()
    assert not owner_alive({"pid": pid, "create_time": 0.0})


def test_job_of_a_live_owner_stays_running_and_crashes_when_it_is_gone(core, clock, sweeper):
    child = subprocess.Popen(["sleep", "60"])
    try:
        new_job(core, "own", {"output/part1": b"track 1\n"}, owner_pid=child.pid)
        assert core.records.get("own").owner["pid"] == child.pid
        assert actions(sweeper.sweep(clock())) == []
        assert core.records.get("own").state == "running"
    finally:
        child.kill()
        child.wait()  # reaped: the pid is free

    report = sweeper.sweep(clock())
    assert actions(report) == [("own", "crash")]
    assert str(child.pid) in report.actions[0].why and report.actions[0].done
    record = core.records.get("own")
    assert record.state == "crashed" and record.where == "quarantine" and record.sealed
    assert record.expires_at == record.ended + 7 * DAY
    quarantined = data_dir(core) / "quarantine" / "own"
    assert (quarantined / "output" / "part1").read_bytes() == b"track 1\n"
    assert not (data_dir(core) / "jobs" / "own").exists()
    receipt = json.loads((quarantined / RECEIPT_FILE).read_text())
    assert receipt["state"] == "crashed" and receipt["owner"]["pid"] == child.pid
    assert [e["to"] for e in events(core, "transition", "own")] == ["crashed"]
    with core.store.read() as r:
        assert r.owners() == []
    assert actions(sweeper.sweep(clock())) == []  # crashed once, not again


def test_zombie_owner_counts_as_gone(core, clock, sweeper):
    child = subprocess.Popen(["sleep", "60"])
    try:
        new_job(core, "z", owner_pid=child.pid)
        child.kill()
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie
        assert actions(sweeper.sweep(clock())) == [("z", "crash")]
    finally:
        child.kill()
        child.wait()


def test_reused_pid_counts_as_gone(core, clock, sweeper):
    new_job(core, "reuse", owner_pid=os.getpid())  # a live process ...
    assert actions(sweeper.sweep(clock())) == []

    def fake_older_owner(record, w):
        record.owner["create_time"] -= 3600  # ... but not the one that registered
    core.records.update("reuse", fake_older_owner)
    report = sweeper.sweep(clock())
    assert actions(report) == [("reuse", "crash")]
    assert core.records.get("reuse").state == "crashed"


def test_resumed_job_is_not_crashed_again_for_its_dead_owner(core, clock, sweeper):
    child = subprocess.Popen(["true"])
    new_job(core, "again", owner_pid=child.pid)
    child.wait()
    assert actions(sweeper.sweep(clock())) == [("again", "crash")]

    core.resume("again")
    assert core.records.get("again").state == "running"
    report = sweeper.sweep(clock())
    assert actions(report) == [], "the resumed job was crashed again for the owner that died before"
    assert core.records.get("again").state == "running"


# -- a job changed between the plan and its application ----------------------------------------


def test_job_resumed_while_the_sweep_plans_is_not_hidden(core, clock, monkeypatch):
    ended_job(core, "race", JobState.FAILED)
    clock.advance(7 * DAY)
    sweeper = Sweeper(core, open_jobs=lambda: set())
    real_plan = Sweeper.plan

    def plan_then_resume(self, now):
        planned = real_plan(self, now)
        core.resume("race")  # a user's `wsfs resume` lands between the plan and its application
        return planned
    monkeypatch.setattr(Sweeper, "plan", plan_then_resume)
    sweeper.sweep(clock())
    record = core.records.get("race")
    assert record.state == "running"
    assert record.hidden is False and record.expires_at is None, "a running job was hidden"


def test_job_restored_while_the_sweep_plans_is_not_purged(core, clock, monkeypatch):
    ended_job(core, "race2", JobState.FAILED)
    clock.advance(7 * DAY)
    sweeper = Sweeper(core, open_jobs=lambda: set())
    sweeper.sweep(clock())
    clock.advance(DAY)
    real_plan = Sweeper.plan

    def plan_then_restore(self, now):
        planned = real_plan(self, now)
        core.restore("race2")  # `wsfs restore` lands between the plan and its application
        return planned
    monkeypatch.setattr(Sweeper, "plan", plan_then_restore)
    sweeper.sweep(clock())
    record = core.records.get("race2")
    assert record.purged_at is None and record.where == "jobs", "a restored job was purged"
    assert (data_dir(core) / "jobs" / "race2" / "output" / "result.txt").exists()


# -- daemon crash recovery -------------------------------------------------------------------------


def test_recover_after_a_crash_quarantines_running_jobs(core, clock):
    new_job(core, "run1", {"output/a": b"a", "temp/t": b"t"})
    new_job(core, "run2", {"input/i": b"i"})
    ended_job(core, "done", JobState.COMPLETED)
    # A transition interrupted after its intent: recovery must finish it, not quarantine it.
    new_job(core, "ending", {"output/e": b"e"})

    def interrupted(record, w):
        record.pending = {"target": "failed", "reason": "boom", "at": clock(), "step": "intent",
                             "from": "running"}
    core.records.update("ending", interrupted)
    # An unflushed manifest batch is lost in a crash: recovery rebuilds it from the tree.
    (data_dir(core) / "jobs" / "run1" / "output" / "late").write_bytes(b"late!")

    finished = core.recovery.recover(unclean=True)
    assert finished == ["ending"]
    assert core.records.get("ending").state == "failed" and core.records.get("ending").where == "jobs"
    assert core.records.get("done").state == "completed"
    for job in ("run1", "run2"):
        record = core.records.get(job)
        assert record.state == "crashed" and record.where == "quarantine" and record.sealed
        assert not (data_dir(core) / "jobs" / job).exists()
        receipt = json.loads((data_dir(core) / "quarantine" / job / RECEIPT_FILE).read_text())
        assert receipt["state"] == "crashed"
    assert (data_dir(core) / "quarantine" / "run1" / "temp" / "t").read_bytes() == b"t"
    assert [path for path, _entry in core.manifest_entries("run1")] == ["output/a", "output/late", "temp/t"]
    assert core.records.get("run1").usage == {"bytes": 7, "files": 3}


def test_recover_clean_leaves_running_jobs_alone(core):
    new_job(core, "calm")
    assert core.recovery.recover(unclean=False) == []
    assert core.records.get("calm").state == "running"


def test_recover_with_on_crash_resume_keeps_jobs_running(tmp_path, clock):
    core = make_core(tmp_path / "data", clock, parse_toml_config('on_crash = "resume"\n'))
    try:
        new_job(core, "keep", {"output/a": b"a"})
        (tmp_path / "data" / "jobs" / "keep" / "output" / "b").write_bytes(b"bb")
        core.recovery.recover(unclean=True)
        record = core.records.get("keep")
        assert record.state == "running" and record.where == "jobs" and not record.sealed
        assert record.usage == {"bytes": 3, "files": 2}
        assert not (tmp_path / "data" / "quarantine" / "keep").exists()
    finally:
        core.store.close()
        core.tree.close()


def test_resume_of_crashed_brings_the_tree_back_and_unseals(core, clock):
    new_job(core, "rs", {"output/track1": b"1"})
    core.recovery.recover(unclean=True)
    assert core.records.get("rs").state == "crashed"
    clock.advance(HOUR)

    record = core.resume("rs")
    assert record.state == "running" and record.where == "jobs"
    assert not record.sealed and record.expires_at is None and record.ended is None
    tree = data_dir(core) / "jobs" / "rs"
    assert (tree / "output" / "track1").read_bytes() == b"1"
    assert not (tree / RECEIPT_FILE).exists()
    assert not (data_dir(core) / "quarantine" / "rs").exists()
    with core.records.mutation("rs"):  # writable again
        pass
    assert [h["state"] for h in record.history] == ["running", "crashed", "running"]
    # ... and it can end normally, with its earlier files in the receipt.
    core.transition("rs", JobState.COMPLETED)
    receipt = json.loads((tree / RECEIPT_FILE).read_text())
    assert [o["path"] for o in receipt["outputs"]] == ["output/track1"]


def test_resume_of_failed_keeps_files(core, clock, sweeper):
    ended_job(core, "rf", JobState.FAILED, {"output/a": b"a"})
    record = core.resume("rf")
    assert record.state == "running" and not record.sealed
    assert (data_dir(core) / "jobs" / "rf" / "output" / "a").read_bytes() == b"a"
    clock.advance(30 * DAY)
    assert actions(sweeper.sweep(clock())) == []  # running: no retention


def test_resume_of_a_hidden_job_needs_restore_first(core, clock, sweeper):
    from wsfs.core.errors import NotAllowedError

    ended_job(core, "hr", JobState.FAILED)
    clock.advance(7 * DAY)
    sweeper.sweep(clock())
    with pytest.raises(NotAllowedError):
        core.resume("hr")
    core.restore("hr")
    assert core.resume("hr").state == "running"


# -- the trash: files that could not be removed ----------------------------------------------------


def test_trash_failures_are_logged_by_path_and_counted_in_status(tmp_path, monkeypatch, caplog):
    from wsfs.core.config import default_config
    from wsfs.fuse.daemon import Daemon

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    daemon = Daemon(str(mnt), str(tmp_path / "data"), default_config())
    daemon.open()
    try:
        stuck_dir = tmp_path / "data" / "trash" / "j.purged.abc" / "output"
        stuck_dir.mkdir(parents=True)
        (stuck_dir / "stuck.bin").write_bytes(b"x")
        (stuck_dir / "fine.bin").write_bytes(b"y")
        real_unlink = os.unlink

        def unlink(path, *args, **kwargs):
            if path == "stuck.bin":
                raise PermissionError(1, "Operation not permitted")
            return real_unlink(path, *args, **kwargs)
        monkeypatch.setattr(os, "unlink", unlink)
        with caplog.at_level(logging.ERROR, logger="wsfs.daemon"):
            daemon.empty_trash()
        assert "j.purged.abc/output/stuck.bin" in caplog.text
        assert not (stuck_dir / "fine.bin").exists()
        assert daemon.status()["counters"]["failed_removals"] >= 1
        monkeypatch.setattr(os, "unlink", real_unlink)
        daemon.empty_trash()
        assert list((tmp_path / "data" / "trash").iterdir()) == []
    finally:
        daemon.close(clean=True)


# -- config ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, key", [
    ('sweep_intervall = "1s"\n', "sweep_intervall"),
    ('[retention]\nfailed = "2 days"\n', "retention.failed"),
    ('[retention]\nfailed = -5\n', "retention.failed"),
    ('[retention]\ngrace = -1\n', "retention.grace"),
    ('[retention]\nfaild = "1d"\n', "retention.faild"),
    ('on_crash = "restart"\n', "on_crash"),
    ('min_free = "lots"\n', "min_free"),
    ('max_jobs = -1\n', "max_jobs"),
    ('quota = "10 gigs"\n', "quota"),
    ('[templates.media]\nareas = { audio = "scrach" }\n', "templates.media.areas.audio"),
    ('[templates.media]\nareas = { audio = "scratch" }\nquta = "1G"\n', "templates.media.quta"),
])
def test_bad_config_names_the_key(text, key):
    from wsfs.core.config import ConfigError

    with pytest.raises(ConfigError) as info:
        parse_toml_config(text)
    assert f"<test>: {key}:" in str(info.value)


def test_config_values_reach_the_templates():
    config = parse_toml_config('quota = "1G"\nmax_files = 7\nsweep_interval = "5m"\n' + MEDIA_CONFIG)
    assert config.sweep_interval == 300
    default, media = config.template("default"), config.template("media")
    assert default.quota == 1 << 30 and default.max_files == 7
    assert default.retention == {"completed": None, "failed": 7 * DAY, "cancelled": DAY, "crashed": 7 * DAY}
    assert default.grace == 12 * HOUR
    assert media.retention["failed"] == 3 * DAY and media.retention["cancelled"] is None
    assert media.retention["crashed"] == 7 * DAY and media.grace == HOUR
    assert media.scratch_areas() == ["audio", "video"] and media.keep_areas() == ["output"]
    assert media.quota == 1 << 30  # inherited from the top level


def test_sample_config_parses():
    from wsfs.core.config import load_config

    config = load_config(str(REPO / "etc" / "wsfs.toml"))
    media = config.template("media")
    assert {a: k.value for a, k in media.areas.items()} == {"audio": "scratch", "video": "scratch",
                                                           "output": "keep"}
    assert config.template("default").retention["failed"] == 7 * DAY


def test_job_of_a_template_removed_from_the_config_follows_the_default_policy(tmp_path, clock, monkeypatch):
    monkeypatch.setattr(Sweeper, "_busy_jobs", lambda self: set())
    data = tmp_path / "data"
    core = make_core(data, clock, parse_toml_config(MEDIA_CONFIG))
    ended_job(core, "old-media", JobState.FAILED, {"output/o": b"o", "audio/a": b"a"}, template="media")
    core.store.close()
    core.tree.close()
    # The next daemon's config has no media template; its default grace is 2 h.
    core = make_core(data, clock, parse_toml_config('[retention]\nfailed = "1d"\ngrace = "2h"\n'))
    try:
        # the record's own areas
        assert core.template(core.records.get("old-media")).scratch_areas() == ["audio", "video"]
        clock.advance(3 * DAY)  # its deadline was fixed when it ended (media: 3 d)
        assert actions(Sweeper(core).sweep(clock())) == [("old-media", "hide")]
        assert core.records.get("old-media").expires_at == clock() + 2 * HOUR, "not the configured grace"
    finally:
        core.store.close()
        core.tree.close()


class _Died(BaseException):
    """Stands for SIGKILL at a fault point: nothing after it runs."""


@pytest.mark.parametrize("step", ["intent", "quarantine", "sealed", "receipt"])
def test_crash_transition_interrupted_at_any_step_is_finished_by_recovery(tmp_path, clock, monkeypatch, step):
    data = tmp_path / "data"
    core = make_core(data, clock)
    new_job(core, "half", {"output/a": b"aaa", "temp/t": b"t"})
    new_job(core, "other", {"output/b": b"b"})

    def die(self, at):
        if at == step:
            raise _Died(at)
    monkeypatch.setattr(type(core), "_fault_point", die)
    with pytest.raises(_Died):
        core.transition("half", JobState.CRASHED, "the wsfs daemon crashed")
    core.store.close()
    core.tree.close()
    monkeypatch.undo()

    core = make_core(data, clock)
    try:
        assert core.recovery.recover(unclean=True) == ["half"]
        for job in ("half", "other"):
            record = core.records.get(job)
            assert (record.state, record.where, record.pending) == ("crashed", "quarantine", None)
            receipt = json.loads((data / "quarantine" / job / RECEIPT_FILE).read_text())
            assert receipt["state"] == "crashed"
            assert not (data / "jobs" / job).exists()
        assert (data / "quarantine" / "half" / "output" / "a").read_bytes() == b"aaa"
        assert (data / "quarantine" / "half" / "temp" / "t").read_bytes() == b"t"
        assert [h["state"] for h in core.records.get("half").history] == ["running", "crashed"]
    finally:
        core.store.close()
        core.tree.close()


# -- the daemon never waits on its own mount ------------------------------------------------------
# A thread of the daemon blocked in a request to its own mount makes a SIGKILLed daemon unkillable
# (request_wait_answer waits uninterruptibly once the request was read), so `wsfs mount` after
# `kill -9` would find the data dir locked forever (docs/spec.md §7).  Seen as a hang in
# test_recovery_mount's SIGKILL tests; these pin the cause without needing the timing.


def _forbid_stat_under(monkeypatch, root: Path) -> list[str]:
    tried: list[str] = []
    real_stat = os.stat

    def stat(path, *args, **kwargs):
        if isinstance(path, (str, os.PathLike)) and os.fspath(path).startswith(str(root)):
            tried.append(os.fspath(path))
            raise AssertionError(f"the daemon stat()ed {path} inside its own mount")
        return real_stat(path, *args, **kwargs)
    monkeypatch.setattr(os, "stat", stat)
    return tried


def test_busy_check_does_not_stat_paths_in_the_mount(core, tmp_path, monkeypatch):
    mnt = tmp_path / "mnt"
    held = mnt / "workspaces" / "j1" / "output" / "x"
    held.parent.mkdir(parents=True)
    held.write_bytes(b"x")
    sweeper = Sweeper(core, mountpoint=str(mnt))
    with open(held, "rb"):
        tried = _forbid_stat_under(monkeypatch, mnt)
        busy = sweeper._busy_jobs()
    assert tried == []
    assert "j1" in busy


def test_ready_probe_does_not_stat_the_mount_from_the_daemon(tmp_path, monkeypatch, caplog):
    import wsfs.fuse.daemon
    from wsfs.core.config import default_config

    mnt = tmp_path / "mnt"
    (mnt / ".wsfs").mkdir(parents=True)
    (mnt / ".wsfs" / "status").write_text("{}")
    daemon = wsfs.fuse.daemon.Daemon(str(mnt), str(tmp_path / "data"), default_config())
    daemon.open()
    try:
        monkeypatch.setattr(wsfs.fuse.daemon, "is_wsfs_mount", lambda path: True)
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
        tried = _forbid_stat_under(monkeypatch, mnt)
        with caplog.at_level(logging.INFO, logger="wsfs.daemon"):
            daemon._announce_ready()
        assert tried == []
        assert "mounted" in caplog.text
    finally:
        daemon.close(clean=True)
