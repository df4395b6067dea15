"""``wsfs doctor`` through a real mount (docs/spec.md §10): the control file, the daemon's
``doctor`` event and the CLI; who may repair and who may look; copies that keep their mtime.
The damaged data dirs and every repair are in ``core/test_doctor.py`` (no mount)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import control_as, sh

from wsfs.client.cli import main


def newest(mnt: Path, kind: str) -> dict:
    events = [json.loads(line) for line in (mnt / ".wsfs" / "events").read_text().splitlines()]
    return [e for e in events if e["kind"] == kind][-1]


@pytest.mark.mount
def test_doctor_through_the_mount_control_file_and_cli(wsfs_mount):
    m = wsfs_mount
    sh("mkdir workspaces/gone workspaces/done workspaces/ok && echo 1 > workspaces/gone/output/a "
       "&& echo 2 > workspaces/done/output/b && echo completed > workspaces/done/.state "
       "&& echo 3 > workspaces/ok/output/c", cwd=m.mnt)
    sh("echo doctor > .wsfs/control", cwd=m.mnt)
    assert newest(m.mnt, "doctor")["problems"] == 0  # the daemon emptied the trash first

    shutil.rmtree(m.data / "jobs" / "gone")
    (m.data / "jobs" / "stray-job" / "output").mkdir(parents=True)
    (m.data / "jobs" / "stray-job" / "output" / "found.txt").write_text("found\n")
    (m.data / "jobs" / "done" / "output" / "sneaked").write_text("in\n")

    refused = sh("echo 'doctor now' > .wsfs/control", cwd=m.mnt, check=False)
    assert refused.returncode != 0 and "Invalid argument" in refused.stderr
    assert newest(m.mnt, "rejected")["reason"] == "usage: doctor [repair]"

    sh("echo doctor > .wsfs/control", cwd=m.mnt)
    event = newest(m.mnt, "doctor")
    assert event["problems"] == 3 and event["repair"] is False and event["actions"] == []
    assert (m.data / "quarantine").exists() and not (m.data / "quarantine" / "stray-job").exists()  # no change

    runner = CliRunner()
    result = runner.invoke(main, ["doctor", "--mount", str(m.mnt)])
    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines() == [
        "orphan-tree: stray-job: jobs/stray-job: a tree without a record (1 file, 6B)",
        "manifest: done: 1 file not in the manifest (output/sneaked)",
        "missing-tree: gone: its record (running) says workspaces/gone, and there is no tree",
        "doctor: 3 problem(s) (1 manifest, 1 missing-tree, 1 orphan-tree); `wsfs doctor --repair` fixes them",
    ]
    as_json = json.loads(runner.invoke(main, ["doctor", "--json", "--mount", str(m.mnt)]).stdout)
    assert as_json["counts"] == {"manifest": 1, "missing-tree": 1, "orphan-tree": 1}

    result = runner.invoke(main, ["doctor", "--repair", "--mount", str(m.mnt)])
    assert result.exit_code == 1, result.output  # it found problems, even though it fixed them
    assert "repaired: gone: tree missing: ended crashed and marked purged" in result.stdout
    assert "repaired: jobs/stray-job: adopted into quarantine/stray-job as a crashed job, with a receipt" \
        in result.stdout
    assert "repaired: done: rebuilt the manifest from the files (2 files, 5 bytes)" in result.stdout
    assert result.stdout.splitlines()[-1].endswith("; after repair 0 left")

    result = runner.invoke(main, ["doctor", "--mount", str(m.mnt)])
    assert result.exit_code == 0 and result.stdout == "doctor: clean\n"
    # The adopted job is in the view like any crashed job; the purged one is gone from it.
    assert (m.mnt / "quarantine" / "stray-job" / "output" / "found.txt").read_text() == "found\n"
    assert json.loads((m.mnt / "quarantine" / "stray-job" / "receipt.json").read_text())["state"] == "crashed"
    assert (m.mnt / "quarantine" / "stray-job" / ".state").read_text() == "crashed\n"
    assert "gone" not in os.listdir(m.ws)  # (a stat could still hit the kernel's 1 s dentry cache)
    assert "output/sneaked" in (m.ws / "done" / ".manifest").read_text()
    # (mfusepy logs the refused write's FuseOSError with a traceback at debug level: not an error)
    assert [ln for ln in m.daemon_errors() if not ln.startswith("Traceback")] == []


@pytest.mark.mount
def test_doctor_repair_is_for_root_but_anyone_may_look(mount_factory):
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to act as another user")
    m = mount_factory(allow_other=True)

    def as_nobody(line: str) -> subprocess.CompletedProcess:
        return control_as(m, 65534, line)

    assert as_nobody("doctor").returncode == 0
    refused = as_nobody("doctor repair")
    assert refused.returncode != 0 and "Operation not permitted" in refused.stderr
    assert newest(m.mnt, "rejected")["reason"] == "doctor repair is for root (or the user the daemon runs as)"
    assert newest(m.mnt, "doctor")["repair"] is False


@pytest.mark.mount
def test_copies_that_keep_their_mtime_leave_the_manifest_right(wsfs_mount, tmp_path):
    """`cp -p`, `touch -d` and `wsfs create --input` (copystat) set mtimes after closing: the manifest follows."""
    m = wsfs_mount
    src = tmp_path / "in.txt"
    src.write_text("input\n")
    os.utime(src, ns=(1_000_000_000, 1_000_000_000))
    result = CliRunner().invoke(main, ["create", "cp", "--input", str(src), "--mount", str(m.mnt)])
    assert result.exit_code == 0, result.output
    sh("cp -p /etc/hostname workspaces/cp/output/ && echo x > workspaces/cp/output/t "
       "&& touch -d 2001-02-03 workspaces/cp/output/t", cwd=m.mnt)
    lines = [json.loads(ln) for ln in (m.ws / "cp" / ".manifest").read_text().splitlines()]
    assert {ln["path"]: ln["mtime_ns"] for ln in lines} == {
        p: os.stat(m.ws / "cp" / p).st_mtime_ns for p in ("input/in.txt", "output/hostname", "output/t")}
    assert lines[0]["mtime_ns"] == 1_000_000_000
    result = CliRunner().invoke(main, ["doctor", "--mount", str(m.mnt)])
    assert result.exit_code == 0 and result.stdout == "doctor: clean\n"
