"""Notices before data goes, and extending an ended job's retention, through a real mount."""

from __future__ import annotations

import json
import time

import pytest
from conftest import sh, wsfs_cli

pytestmark = pytest.mark.mount


wsfs = wsfs_cli


def test_on_expiring_runs_once_before_the_hide_and_once_before_the_purge(mount_factory, tmp_path):
    log = tmp_path / "notices"
    m = mount_factory(config=f'[templates.n]\nareas = {{ output = "keep" }}\nexpiring_notice = "1h"\n'
                             f'on_expiring = "echo $WSFS_JOB $WSFS_ACTION $WSFS_OWNER $WSFS_EXPIRES >> {log}"\n'
                             '[templates.n.retention]\nfailed = "2s"\ngrace = "2s"\n')
    sh('echo "create soon template=n" > .wsfs/control && echo failed > workspaces/soon/.state', cwd=m.mnt)
    jobs = {json.loads(line)["id"]: json.loads(line) for line in (m.mnt / ".wsfs" / "jobs").read_text().splitlines()}
    assert jobs["soon"]["hide_at"] and jobs["soon"]["purge_at"] == pytest.approx(jobs["soon"]["hide_at"] + 2)

    def sweep():
        sh("echo sweep > .wsfs/control", cwd=m.mnt)

    sweep()
    sweep()  # once per deadline: not again
    assert [line.split()[:3] for line in log.read_text().splitlines()] == [["soon", "hide", "root"]]
    time.sleep(2.2)
    sweep()  # hidden now
    sweep()  # the notice of the purge
    time.sleep(2.2)
    sweep()  # purged
    assert [line.split()[:2] for line in log.read_text().splitlines()] == [["soon", "hide"], ["soon", "purge"]]
    events = [json.loads(line) for line in (m.mnt / ".wsfs" / "events").read_text().splitlines()]
    assert [e["action"] for e in events if e["kind"] == "notice"] == ["hide", "purge"]
    assert [e["kind"] for e in events if e.get("job") == "soon" and e["kind"] in ("hidden", "purged")] == [
        "hidden", "purged"]


def test_extend_an_ended_jobs_retention_within_the_cap(mount_factory):
    m = mount_factory(config='max_extensions = 1\n[retention]\ncompleted = "1h"\n')
    sh("mkdir workspaces/keep && echo completed > workspaces/keep/.state", cwd=m.mnt)
    before = json.loads((m.ws / "keep" / ".job").read_text())["expires_at"]
    r = wsfs("extend", "keep", "7", "--mount", str(m.mnt))
    assert r.returncode == 0, r.stderr
    after = json.loads((m.ws / "keep" / ".job").read_text())["expires_at"]
    assert after == pytest.approx(before + 7 * 86400, abs=1)
    r = wsfs("extend", "keep", "1d", "--mount", str(m.mnt))
    assert r.returncode == 1 and "extended 1 times already" in r.stderr
    listing = wsfs("list", "--mount", str(m.mnt)).stdout
    assert "PURGE" in listing.splitlines()[0] and time.strftime("%Y-%m-%d", time.localtime(after + 86400)) in listing
