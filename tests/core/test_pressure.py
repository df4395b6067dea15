"""Cleanup under disk pressure in the core (wsfs.retention ``_relieve``), with a fake clock and disk.

The fake disk holds ``CAPACITY`` bytes: what is free is that less the bytes of every file under
the data dir's jobs/, quarantine/ and trash/, so purging a job frees only once its tree has left
the trash, as on a real disk.  ``min_free`` is ``NEED``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import events, make_core, parse_toml_config
from test_retention import DAY, actions, ended_job, new_job, snapshot

from wsfs.core.model import JobState
from wsfs.core.retention import Sweeper

MIB = 1 << 20
CAPACITY, NEED = 100 * MIB, 30 * MIB


def disk_bytes(data: Path) -> int:
    return sum(p.stat().st_size for top in ("jobs", "quarantine", "trash") for p in (data / top).rglob("*")
               if p.is_file() and not p.is_symlink())


@pytest.fixture
def pressured(tmp_path, clock, monkeypatch):
    """make(config) -> a JobService whose data dir lives on the fake disk."""
    monkeypatch.setattr(Sweeper, "_busy_jobs", lambda self: set(self.open_jobs()))
    made = []

    def make(config: str = ""):
        core = make_core(tmp_path / "data", clock, parse_toml_config(config))
        core.capacity = CAPACITY  # a test grows the disk while it sets up
        core.free_space = lambda: (core.capacity - disk_bytes(tmp_path / "data"), NEED)
        made.append(core)
        return core
    yield make
    for core in made:
        core.store.close()
        core.tree.close()


def job_of(core, job: str, state: JobState, mib: int) -> None:
    ended_job(core, job, state, {"output/data.bin": b"\0" * (mib * MIB)})


def test_nothing_happens_while_there_is_room(pressured, clock):
    core = pressured('pressure = ["hidden", "failed"]\npressure_min_age = "0s"')
    job_of(core, "f1", JobState.FAILED, 10)
    clock.advance(DAY)
    report = Sweeper(core).sweep(clock())
    assert actions(report) == [] and report.pressure is None


def test_trash_goes_first_and_no_job_when_that_is_enough(pressured, clock):
    core = pressured('pressure = ["failed"]\npressure_min_age = "0s"')
    job_of(core, "f1", JobState.FAILED, 10)
    (Path(core.tree.data_dir) / "trash" / "old.purged.x").mkdir()
    (Path(core.tree.data_dir) / "trash" / "old.purged.x" / "big").write_bytes(b"\0" * (65 * MIB))
    clock.advance(DAY)
    report = Sweeper(core).sweep(clock())
    assert actions(report) == [(None, "empty-trash")] and report.actions[0].done
    assert core.records.get("f1").where == "jobs"
    assert report.pressure["free_before"] < NEED <= report.pressure["free_after"]


def test_policy_order_oldest_first_until_the_shortfall_is_covered(pressured, clock):
    core = pressured('pressure = ["hidden", "cancelled", "failed", "completed"]\npressure_min_age = "1h"\n'
                     '[retention]\nfailed = "2d"\ngrace = "4d"\n')
    sweeper = Sweeper(core)
    core.capacity = 1 << 40

    def day(days: float = 1.0) -> None:
        clock.advance(days * DAY)
        sweeper.sweep(clock())  # the regular passes hide what is due, as the days go by

    job_of(core, "failed-old", JobState.FAILED, 10)            # hidden at day 2
    day()
    job_of(core, "completed-old", JobState.COMPLETED, 10)
    job_of(core, "failed-young-hidden", JobState.FAILED, 10)   # hidden at day 3
    day()
    job_of(core, "cancelled", JobState.CANCELLED, 10)          # hidden at day 3
    day()
    job_of(core, "failed-new", JobState.FAILED, 10)            # hidden at day 5
    new_job(core, "running", {f"output/r{i}.bin": b"\0" * (10 * MIB) for i in range(4)})
    day(2 - 10 / DAY)
    job_of(core, "too-young", JobState.FAILED, 10)             # ended 10 s before the pass: under pressure_min_age
    clock.advance(10)
    core.capacity = CAPACITY
    # 100 MiB and some receipts on a 100 MiB disk, 30 MiB needed: four 10 MiB jobs must go.
    plan = sweeper.sweep(clock(), dry_run=True)
    purges = [a.job for a in plan.actions if a.action == "purge"]
    # Hidden past half their grace first, longest hidden first (ties by name); then by state, in
    # the policy's order, oldest first; never too-young, completed-old (completed comes last) or running.
    assert purges == ["failed-old", "cancelled", "failed-young-hidden", "failed-new"]
    assert all("disk pressure" in a.why for a in plan.actions if a.action == "purge")
    assert "past half its grace" in plan.actions[-4].why and "failed for 2d" in plan.actions[-1].why
    before = snapshot(core)
    Sweeper(core).sweep(clock(), dry_run=True)
    assert snapshot(core) == before  # a dry run changes nothing
    report = sweeper.sweep(clock())
    assert [a.job for a in report.actions if a.action == "purge" and a.done] == purges
    assert report.pressure["free_before"] < 0 + MIB and report.pressure["free_after"] >= NEED
    for job in purges:
        record = core.records.get(job)
        assert record.where is None and record.purge_reason == "disk pressure"
        assert [e["reason"] for e in events(core, "purged", job)] == ["disk pressure"]
    for job in ("completed-old", "too-young", "running"):
        assert core.records.get(job).where == "jobs", job
    assert os.listdir(Path(core.tree.data_dir) / "trash") == []
    assert events(core, "sweep")[-1]["pressure"]["min_free"] == NEED


def test_off_purges_nothing_and_running_and_young_jobs_never_go(pressured, clock):
    core = pressured('pressure = "off"')
    job_of(core, "f1", JobState.FAILED, 40)
    new_job(core, "r1", {"output/r.bin": b"\0" * (40 * MIB)})
    clock.advance(DAY)
    report = Sweeper(core).sweep(clock())
    assert [a for a in report.actions if a.action == "purge"] == []
    assert report.pressure["free_after"] < NEED
    core.config = parse_toml_config('pressure = ["failed", "completed"]\npressure_min_age = "2d"')
    assert [a for a in Sweeper(core).sweep(clock()).actions if a.action == "purge"] == []  # ended 1 day ago
    clock.advance(DAY)
    report = Sweeper(core).sweep(clock())
    assert [(a.job, a.done) for a in report.actions if a.action == "purge"] == [("f1", True)]
    assert core.records.get("r1").where == "jobs"


def test_a_job_with_results_still_to_publish_or_held_open_is_not_purged(pressured, clock):
    core = pressured('pressure = ["completed"]\npressure_min_age = "0s"\n'
                     '[templates.pub]\nareas = { output = "keep" }\n'
                     'publish = [{ area = "output", to = "/nonexistent/dir/{job}" }]\n')
    job_of(core, "plain", JobState.COMPLETED, 40)
    new_job(core, "pub", {"output/p.bin": b"\0" * (40 * MIB)}, template="pub")
    core.transition("pub", JobState.COMPLETED)
    assert core.records.get("pub").publish["status"] == "pending"
    sweeper = Sweeper(core, open_jobs=lambda: {"plain"})
    report = sweeper.sweep(clock())
    assert [(a.job, a.action) for a in report.actions if a.job] == [("plain", "skip")]
    assert core.records.get("pub").where == "jobs" and core.records.get("plain").where == "jobs"


def test_pressure_config_errors():
    from wsfs.core.config import ConfigError

    for text in ('pressure = "on"', 'pressure = ["hidden", "hidden"]', 'pressure = ["running"]',
                 'pressure = [1]', 'pressure_min_age = "never"', 'pressure_min_age = "soon"'):
        with pytest.raises(ConfigError) as info:
            parse_toml_config(text)
        assert "pressure" in str(info.value)
    assert parse_toml_config("").pressure == ("hidden",)
    assert parse_toml_config('pressure = "off"').pressure == ()


def test_a_clone_short_of_space_waits_for_the_sweeper_thread_and_never_deadlocks(pressured, clock, monkeypatch):
    """A clone holds its source's lock while it makes the new job; the cleanup it asks for may
    want to purge that very source.  It runs on the sweeper's thread, so the clone waits at most
    RELIEF_WAIT_S and is refused (ENOSPC), and the cleanup goes on once the clone let go."""
    import threading

    from wsfs.core import retention
    from wsfs.core.cloning import clone_job
    from wsfs.core.errors import NoSpaceError

    monkeypatch.setattr(retention, "RELIEF_WAIT_S", 1.0)
    core = pressured('pressure = ["failed"]\npressure_min_age = "0s"')
    job_of(core, "src", JobState.FAILED, 75)
    clock.advance(DAY)
    sweeper = Sweeper(core)
    core.space_short = sweeper.relieve_now
    stop = threading.Event()
    thread = threading.Thread(target=sweeper.run, args=(stop, 3600.0), daemon=True)
    thread.start()
    try:
        with pytest.raises(NoSpaceError):
            clone_job(core, "src", "copy", 0, 0)
        thread.join(0.1)
        for _ in range(100):  # the sweeper's pass, blocked on the clone's lock until then, finishes
            if core.records.get("src").where is None:
                break
            threading.Event().wait(0.05)
        assert core.records.get("src").purge_reason == "disk pressure"
        assert core.records.get("copy") is None
    finally:
        stop.set()
        sweeper.wake.set()
        thread.join(5)
