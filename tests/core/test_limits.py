"""Limits and templates in the core (docs/spec.md §8, §9): the UsageMeter, and the limits a
job gets at creation.  The same through a real shell: ``mount/test_limits_mount.py``."""

from __future__ import annotations

import errno
import os
import threading

import pytest
from conftest import make_core, parse_toml_config

from wsfs.core.errors import BadCommandError, NoSpaceError, QuotaError
from wsfs.core.model import JobState

KIB, MIB = 1 << 10, 1 << 20


# -- the core: UsageMeter ------------------------------------------------------------------


def test_meter_refuses_a_change_that_would_cross_the_quota_whole(core):
    core.create_job("q", 0, 0, quota=1000)
    meter = core.usage
    meter.charge("q", 600)
    with pytest.raises(QuotaError) as info:
        meter.charge("q", 401)
    assert info.value.errno == errno.EDQUOT and "quota" in str(info.value)
    assert meter.current("q") == (600, 0)  # nothing of the refused change was counted
    meter.charge("q", 400)                # exactly up to the quota is fine
    assert meter.current("q") == (1000, 0)
    with pytest.raises(QuotaError):
        meter.charge("q", 1)
    meter.charge("q", -300)               # freeing is always allowed
    meter.charge("q", 300)
    assert meter.current("q") == (1000, 0)


def test_meter_max_files(core):
    core.create_job("mf", 0, 0, max_files=2)
    meter = core.usage
    meter.charge("mf", 0, 1)
    meter.charge("mf", 0, 1)
    with pytest.raises(QuotaError) as info:
        meter.charge("mf", 0, 1)
    assert "max_files" in str(info.value)
    meter.charge("mf", 10**12, 0)  # no byte quota: any size
    meter.charge("mf", 0, -1)
    meter.charge("mf", 0, 1)
    assert meter.current("mf") == (10**12, 2)


def test_meter_never_goes_below_zero_and_zero_means_no_limit(core):
    core.create_job("free", 0, 0)
    core.usage.charge("free", -50, -3)
    assert core.usage.current("free") == (0, 0)
    core.usage.charge("free", 10**15, 10**6)
    assert core.usage.current("free") == (10**15, 10**6)


def test_meter_starts_from_the_manifest_and_reloads_after_forget(core):
    core.create_job("m", 0, 0, quota=100)
    out = os.path.join(core.tree.data_dir, "jobs", "m", "output")
    with open(os.path.join(out, "a"), "wb") as f:
        f.write(b"x" * 70)
    core.recovery.rebuild_manifest("m")  # the manifest, not a tree walk, is where usage comes from
    assert core.usage.current("m") == (70, 1)
    with pytest.raises(QuotaError):
        core.usage.charge("m", 31)
    core.usage.charge("m", 30)
    core.usage.forget("m")
    assert core.usage.current("m") == (70, 1)  # back to the manifest's sum


def test_meter_lets_exactly_the_quota_through_under_concurrency(core):
    core.create_job("race", 0, 0, quota=500)
    ok, refused = [], []

    def writer():
        for _ in range(100):
            try:
                core.usage.charge("race", 1)
                ok.append(1)
            except QuotaError:
                refused.append(1)
    threads = [threading.Thread(target=writer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ok) == 500 and len(refused) == 300
    assert core.usage.current("race") == (500, 0)


def test_limits_come_from_the_template_unless_given(tmp_path, clock):
    config = parse_toml_config('quota = "2M"\nmax_files = 9\n[templates.media]\n'
                               'areas = { audio = "scratch", output = "keep" }\nquota = "5G"\n')
    core = make_core(tmp_path / "data", clock, config)
    try:
        assert (core.create_job("a", 0, 0).quota, core.records.get("a").max_files) == (2 * MIB, 9)
        media = core.create_job("b", 0, 0, template="media")
        assert (media.quota, media.max_files) == (5 << 30, 9)
        given = core.create_job("c", 0, 0, template="media", quota=MIB, max_files=1)
        assert (given.quota, given.max_files) == (MIB, 1)
    finally:
        core.store.close()
        core.tree.close()


def test_max_jobs_and_min_free_at_creation(tmp_path, clock):
    core = make_core(tmp_path / "data", clock, parse_toml_config("max_jobs = 2\n"))
    try:
        core.create_job("one", 0, 0)
        core.create_job("two", 0, 0)
        with pytest.raises(QuotaError):
            core.create_job("three", 0, 0)
        assert core.records.get("three") is None
        core.transition("one", JobState.COMPLETED)
        core.transition("one", JobState.ARCHIVED)  # its workspace is gone: room for another
        core.create_job("three", 0, 0)
    finally:
        core.store.close()
        core.tree.close()
    core = make_core(tmp_path / "data2", clock, parse_toml_config('min_free = "1P"\n'))
    try:
        with pytest.raises(NoSpaceError) as info:
            core.create_job("big", 0, 0)
        assert info.value.errno == errno.ENOSPC
        assert core.records.get("big") is None and not os.path.exists(tmp_path / "data2" / "jobs" / "big")
    finally:
        core.store.close()
        core.tree.close()


def test_unknown_template_is_einval(core):
    with pytest.raises(BadCommandError) as info:
        core.create_job("t", 0, 0, template="nope")
    assert info.value.errno == errno.EINVAL and "nope" in str(info.value)
    assert core.records.get("t") is None


# -- through a real mount -------------------------------------------------------------------------


