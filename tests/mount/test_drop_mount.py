"""Eager scratch cleanup: ``drop AREA`` empties a running job's scratch area now, through a real mount.

README "Dropping scratch during a run": the area is swapped with an empty one in one step (its
old contents wait in the trash), its bytes leave the job's usage and quota at once, the drop is
recorded in the stages and the events, and keep and input areas are refused with EPERM.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from conftest import events, sh, wsfs_cli

pytestmark = pytest.mark.mount


def job(m, name: str) -> dict:
    return json.loads((m.ws / name / ".job").read_text())


def state_write(m, name: str, text: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f'echo "{text}" > workspaces/{name}/.state'], cwd=m.mnt,
                          capture_output=True, text=True)


def trash_names(m) -> list[str]:
    return os.listdir(m.data / "trash")


def test_drop_empties_a_scratch_area_and_gives_its_quota_back(mount_factory):
    m = mount_factory()
    sh("mkdir workspaces/enc && echo 'create enc2 quota=3M' > .wsfs/control", cwd=m.mnt)
    sh("mkdir -p workspaces/enc2/temp/frames && head -c 2M /dev/zero > workspaces/enc2/temp/frames/a.raw "
       "&& echo kept > workspaces/enc2/output/keep.txt", cwd=m.mnt)
    before = job(m, "enc2")["usage"]
    assert before["bytes"] == 2 * 1024 * 1024 + 5 and before["files"] == 2
    # 2 MiB more would cross the 3 MiB quota now ...
    r = subprocess.run(["bash", "-c", "head -c 2M /dev/zero > workspaces/enc2/output/b.raw"], cwd=m.mnt,
                       capture_output=True, text=True)
    assert r.returncode != 0 and "quota" in r.stderr.lower()
    sh("rm workspaces/enc2/output/b.raw", cwd=m.mnt)
    sh('echo "drop temp" > workspaces/enc2/.state', cwd=m.mnt)
    # ... the area is there and empty, with its mode and owner, and the rest is untouched.
    assert os.listdir(m.ws / "enc2" / "temp") == []
    assert (m.ws / "enc2" / "output" / "keep.txt").read_text() == "kept\n"
    record = job(m, "enc2")
    assert record["usage"] == {"bytes": 5, "files": 1}
    assert record["state"] == "running"
    assert record["stages"][-1]["name"] == "drop" and record["stages"][-1]["dropped"] == ["temp"]
    manifest = (m.ws / "enc2" / ".manifest").read_text()
    assert "temp/" not in manifest and "output/keep.txt" in manifest
    # ... and after the drop the quota has room again.
    sh("head -c 2M /dev/zero > workspaces/enc2/output/b.raw && echo more > workspaces/enc2/temp/again", cwd=m.mnt)
    assert job(m, "enc2")["usage"]["files"] == 3
    dropped = events(m, "dropped")
    assert dropped[-1]["job"] == "enc2" and dropped[-1]["areas"]["temp"] == {"bytes": 2 * 1024 * 1024, "files": 1}
    sh("echo completed > workspaces/enc2/.state", cwd=m.mnt)
    receipt = json.loads((m.ws / "enc2" / "receipt.json").read_text())
    assert receipt["stages"][-1]["dropped"] == ["temp"]
    assert sorted(f["path"] for f in receipt["outputs"]) == ["output/b.raw", "output/keep.txt"]
    # The trash empties in the background.
    deadline = time.monotonic() + 20
    while trash_names(m) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert trash_names(m) == []
    assert m.daemon_errors() == []


def test_drop_refuses_keep_input_unknown_areas_and_ended_jobs(mount_factory):
    m = mount_factory()
    sh("mkdir workspaces/j && echo data > workspaces/j/input/in && echo out > workspaces/j/output/o", cwd=m.mnt)
    for area in ("output", "input"):
        r = state_write(m, "j", f"drop {area}")
        assert r.returncode != 0 and "Operation not permitted" in r.stderr
    r = state_write(m, "j", "drop nosuch")
    assert r.returncode != 0 and "Invalid argument" in r.stderr
    r = state_write(m, "j", "drop ../x")
    assert r.returncode != 0 and "Invalid argument" in r.stderr
    # Nothing changed: both files are there, counted, and no stage was recorded.
    assert (m.ws / "j" / "input" / "in").read_text() == "data\n"
    assert job(m, "j")["usage"]["files"] == 2 and job(m, "j")["stages"] == []
    rejected = [e for e in events(m, "rejected") if e["job"] == "j"]
    assert len(rejected) == 4 and "only scratch areas are dropped" in rejected[0]["reason"]
    sh("echo failed > workspaces/j/.state", cwd=m.mnt)
    r = state_write(m, "j", "drop temp")
    assert r.returncode != 0 and "Operation not permitted" in r.stderr


def test_a_file_open_in_a_dropped_area_keeps_working_outside_the_job(mount_factory):
    m = mount_factory()
    sh("echo 'create open quota=1M' > .wsfs/control", cwd=m.mnt)
    path = m.ws / "open" / "temp" / "log"
    with open(path, "wb") as f:
        f.write(b"x" * 1000)
        f.flush()
        sh('echo "drop temp" > workspaces/open/.state', cwd=m.mnt)
        # Still writable (its bytes are no longer the job's: past the job's whole quota is fine) ...
        f.write(b"y" * (2 * 1024 * 1024))
        f.flush()
        os.fsync(f.fileno())
        assert os.fstat(f.fileno()).st_size == 1000 + 2 * 1024 * 1024
    # ... but it is in no listing, no manifest and no usage of the job.
    assert os.listdir(m.ws / "open" / "temp") == []
    assert job(m, "open")["usage"] == {"bytes": 0, "files": 0}
    assert (m.ws / "open" / ".manifest").read_text() == ""
    assert m.daemon_errors() == []


def test_stage_with_drop_and_a_templates_drop_on_stage(mount_factory):
    m = mount_factory(config='[templates.media]\nareas = { audio = "scratch", video = "scratch", output = "keep" }\n'
                             'drop_on_stage = { audio = ["encode"] }\n')
    sh("echo 'create m template=media' > .wsfs/control && echo a > workspaces/m/audio/a.wav "
       "&& echo v > workspaces/m/video/v.y4m", cwd=m.mnt)
    sh('echo "stage encode" > workspaces/m/.state', cwd=m.mnt)
    assert os.listdir(m.ws / "m" / "audio") == [] and os.listdir(m.ws / "m" / "video") == ["v.y4m"]
    record = job(m, "m")
    assert record["stage"] == "encode" and record["stages"][-1]["dropped"] == ["audio"]
    sh('echo "stage mux drop=video" > workspaces/m/.state', cwd=m.mnt)
    assert os.listdir(m.ws / "m" / "video") == []
    assert job(m, "m")["stage"] == "mux" and job(m, "m")["usage"] == {"bytes": 0, "files": 0}
    r = wsfs_cli("show", "m", "--mount", str(m.mnt))
    assert r.returncode == 0 and "mux  (dropped video/)" in r.stdout, r.stdout
    r = state_write(m, "m", "stage mux drop=output")
    assert r.returncode != 0 and "Operation not permitted" in r.stderr
    assert job(m, "m")["stages"][-1]["name"] == "mux"  # the refused stage was not recorded


@pytest.mark.parametrize("fault", [None, "drop-swapped"])
def test_a_drop_interrupted_by_kill_9_leaves_the_job_consistent(mount_factory, fault):
    """Killed after the drop, or between emptying the area and committing the record: the next
    mount (which quarantines the job, the daemon having crashed) counts what the tree holds."""
    m = mount_factory(env={"WSFS_FAULT": f"after:{fault}"} if fault else {})
    sh("mkdir workspaces/k && head -c 100K /dev/zero > workspaces/k/temp/t && echo o > workspaces/k/output/o",
       cwd=m.mnt)
    r = state_write(m, "k", "drop temp")
    if fault:
        assert r.returncode != 0  # the daemon died inside the write: nothing was acknowledged
        m.proc.wait(timeout=10)
    else:
        assert r.returncode == 0, r.stderr
        m.kill9()
    m.env.pop("WSFS_FAULT", None)
    offset = len(m.log_text())  # the killed run's log ends in the fault's CRITICAL line, on purpose
    m.restart()
    record = json.loads((m.mnt / "quarantine" / "k" / ".job").read_text())
    assert record["state"] == "crashed"
    assert os.listdir(m.mnt / "quarantine" / "k" / "temp") == []
    assert record["usage"] == {"bytes": 2, "files": 1}
    assert (m.mnt / "quarantine" / "k" / ".manifest").read_text().count("\n") == 1
    sh('echo "resume k" > .wsfs/control', cwd=m.mnt)
    assert job(m, "k")["usage"] == {"bytes": 2, "files": 1}
    assert m.daemon_errors(offset) == []
