"""Cleanup under disk pressure through a real mount, on a small tmpfs data disk.

A writer makes job after job (16 MiB each, then ended) on a 160 MiB disk with ``min_free`` 48M:
three times what fits.  The sweeper purges the oldest ended jobs, by the policy, as each new job
finds less than min_free, so the writer never sees ENOSPC or EDQUOT, and every early purge says
``disk pressure``.  ``bench/pressure.py`` measures the same thing, longer, and reports the
lowest free space seen.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from conftest import sh, wsfs_cli

pytestmark = pytest.mark.mount

MIB = 1 << 20


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160M,mode=0755", "tmpfs", str(disk)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def free_bytes(path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_a_writer_filling_the_disk_never_runs_out_and_old_jobs_go_by_the_policy(mount_factory, small_disk):
    m = mount_factory(data=small_disk / "data",
                      config='min_free = "48M"\npressure = ["hidden", "cancelled", "failed", "completed"]\n'
                             'pressure_min_age = "0s"\nsweep_interval = "1h"\n')
    lowest = free_bytes(small_disk)
    for i in range(30):
        state = "failed" if i % 3 else "completed"
        sh(f"mkdir workspaces/w{i:02d} && head -c 16M /dev/zero > workspaces/w{i:02d}/output/data "
           f"&& echo {state} > workspaces/w{i:02d}/.state", cwd=m.mnt)
        lowest = min(lowest, free_bytes(small_disk))
    # Room at every mkdir: at worst min_free less the one job being written (and the store's pages).
    assert lowest >= 48 * MIB - 16 * MIB - 8 * MIB, lowest
    jobs = {j["id"]: j for j in map(json.loads, (m.mnt / ".wsfs" / "jobs").read_text().splitlines())}
    purged = sorted(j for j, r in jobs.items() if r.get("purged_at"))
    kept = sorted(j for j, r in jobs.items() if r.get("where"))
    assert len(purged) >= 20 and "w29" in kept
    # By the policy: failed jobs go before completed ones, oldest first.
    failed_kept = [j for j in kept if int(j[1:]) % 3]
    completed_purged = [j for j in purged if not int(j[1:]) % 3]
    if completed_purged:
        assert not [j for j in failed_kept if j < max(completed_purged)], (kept, purged)
    events = [json.loads(line) for line in (m.mnt / ".wsfs" / "events").read_text().splitlines()]
    reasons = {e["job"]: e.get("reason") for e in events if e["kind"] == "purged"}
    assert sorted(reasons) == purged and set(reasons.values()) == {"disk pressure"}
    assert "disk pressure" in m.log_text()
    assert m.daemon_errors() == []


def test_with_pressure_off_a_new_job_is_refused_below_min_free(mount_factory, small_disk):
    m = mount_factory(data=small_disk / "data", config='min_free = "48M"\npressure = "off"\n')
    sh("mkdir workspaces/a && head -c 120M /dev/zero > workspaces/a/output/big && echo failed > workspaces/a/.state",
       cwd=m.mnt)
    r = subprocess.run(["bash", "-c", "mkdir workspaces/b"], cwd=m.mnt, capture_output=True, text=True)
    assert r.returncode != 0 and "No space left on device" in r.stderr
    r = wsfs_cli("sweep", "--dry-run", "--json", "--mount", str(m.mnt))
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["pressure"]["free_before"] < report["pressure"]["min_free"]
    assert [a for a in report["actions"] if a["action"] == "purge"] == []
    r = wsfs_cli("sweep", "--dry-run", "--mount", str(m.mnt))  # what a person reads
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("disk pressure: ") and " free, min_free 48.0M" in r.stdout, r.stdout
    assert (m.ws / "a" / "output" / "big").stat().st_size == 120 * MIB
