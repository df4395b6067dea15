"""Retention, crash recovery and owner liveness through a real mount and a real shell (docs/spec.md §4, §7, §10).

Waiting for the sweeper is polling with generous deadlines, never a fixed
sleep that a test's success depends on.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import psutil
import pytest
from conftest import REPO, events, sh, wait_until

DEADLINE = 30.0


def wsfs(m, *args, check: bool = True, env=None) -> subprocess.CompletedProcess:
    """The ``wsfs`` CLI (against mount ``m`` when given), as a user would run it."""
    env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    if m is not None:
        env["WSFS_MOUNT"] = str(m.mnt)
    result = subprocess.run([sys.executable, "-m", "wsfs", *args], capture_output=True, text=True, env=env,
                            timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"wsfs {' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result


def wait_for(what: str, predicate, timeout: float = DEADLINE, interval: float = 0.1):
    return wait_until(predicate, what, timeout, interval)


def records(m) -> dict[str, dict]:
    text = (m.mnt / ".wsfs" / "jobs").read_text()
    return {r["id"]: r for r in (json.loads(line) for line in text.splitlines() if line.strip())}


def listed(m, top: str = "workspaces") -> list[str]:
    return sh(f"ls {top}", cwd=m.mnt).stdout.split()


def write_fsynced(path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


# -- retention in seconds, from a shell -----------------------------------------------------------

RETENTION_IN_SECONDS = """
sweep_interval = "1s"
[retention]
failed = "3s"
grace = "4s"
"""


@pytest.mark.mount
def test_failed_job_appears_hides_restores_hides_again_and_is_purged(mount_factory):
    m = mount_factory(config=RETENTION_IN_SECONDS)
    sh("mkdir workspaces/r1 && echo data > workspaces/r1/output/keep.txt && echo 'failed boom' > workspaces/r1/.state",
       cwd=m.mnt)
    assert "r1" in listed(m)
    assert sh("cat workspaces/r1/output/keep.txt", cwd=m.mnt).stdout == "data\n"

    # Hidden: gone from the view and from lookups, data kept.
    wait_for("r1 to be hidden", lambda: "r1" not in listed(m))
    wait_for("lookups of r1 to fail", lambda: sh("test -e workspaces/r1", cwd=m.mnt, check=False).returncode)
    assert (m.data / "jobs" / "r1" / "output" / "keep.txt").read_text() == "data\n"
    assert re.search(r"^r1\s+failed \(hidden\)", wsfs(m, "list", "--all").stdout, re.M)
    assert "r1" not in wsfs(m, "list").stdout
    assert records(m)["r1"]["hidden"] is True

    # Restored: back with its files, for a fresh retention period.
    assert "restored" in wsfs(m, "restore", "r1").stdout
    assert sh("cat workspaces/r1/output/keep.txt", cwd=m.mnt).stdout == "data\n"
    assert sh("cat workspaces/r1/.state", cwd=m.mnt).stdout == "failed\n"
    assert "r1" in listed(m)

    # Hidden again, then purged after the grace: tree deleted, record kept with its purge time.
    wait_for("r1 to be hidden again", lambda: "r1" not in listed(m))
    purged = wait_for("r1 to be purged", lambda: records(m)["r1"].get("purged_at"))
    assert purged > records(m)["r1"]["ended"]
    assert records(m)["r1"]["state"] == "failed"
    assert not (m.data / "jobs" / "r1").exists()
    wait_for("the trash to be emptied", lambda: not os.listdir(m.data / "trash"))
    assert re.search(r"^r1\s+failed \(purged\)", wsfs(m, "list", "--all").stdout, re.M)
    result = wsfs(m, "restore", "r1", check=False)
    assert result.returncode == 1 and "no tree left" in result.stderr

    assert [e["kind"] for e in events(m, job="r1") if e["kind"] in ("hidden", "restored", "purged")] == \
        ["hidden", "restored", "hidden", "purged"]
    status = json.loads((m.mnt / ".wsfs" / "status").read_text())
    assert status["last_sweep"] is not None and status["last_sweep"]["dry_run"] is False
    assert m.daemon_errors() == []


@pytest.mark.mount
def test_a_tree_in_use_is_skipped_until_it_is_free(mount_factory):
    m = mount_factory(config='sweep_interval = "1s"\n[retention]\nfailed = "1s"\ngrace = "1s"\n')
    for job in ("cwd", "fd"):
        sh(f"mkdir workspaces/{job} && echo x > workspaces/{job}/output/x && echo failed > workspaces/{job}/.state",
           cwd=m.mnt)
    holder = subprocess.Popen(["sleep", "120"], cwd=m.ws / "cwd" / "output")  # a shell still cd'ed there
    reader = open(m.ws / "fd" / "output" / "x")                               # a file still open through the mount
    try:
        for job in ("cwd", "fd"):
            wait_for(f"{job}'s purge to be skipped", lambda job=job: events(m, "skipped", job))
            assert records(m)[job]["purged_at"] is None and records(m)[job]["hidden"] is True
            assert (m.data / "jobs" / job / "output" / "x").read_text() == "x\n"
        assert reader.read() == "x\n"
    finally:
        holder.kill()
        holder.wait()
        reader.close()
    for job in ("cwd", "fd"):
        wait_for(f"{job} to be purged", lambda job=job: records(m)[job].get("purged_at"))
        assert not (m.data / "jobs" / job).exists()
    assert m.daemon_errors() == []


# -- the daemon killed with SIGKILL ----------------------------------------------------------------


def _start_three_jobs(m) -> dict[str, bytes]:
    contents = {}
    for i in (1, 2, 3):
        job = f"k{i}"
        sh(f"mkdir workspaces/{job}", cwd=m.mnt)
        contents[job] = f"track {i}\n".encode() * 1000
        write_fsynced(m.ws / job / "output" / "track.flac", contents[job])
        write_fsynced(m.ws / job / "temp" / "scratch", b"scratch")
    return contents


@pytest.mark.mount
def test_sigkill_then_mount_again_quarantines_running_jobs(mount_factory):
    m = mount_factory()
    contents = _start_three_jobs(m)
    sh("mkdir workspaces/done && echo completed > workspaces/done/.state", cwd=m.mnt)

    m.kill9()
    m.start()  # `wsfs mount` on the same mount point clears the stale mount itself
    assert "clearing the stale mount" in m.log_text()
    assert "recovering" in m.log_text()

    assert listed(m) == ["done"]
    assert listed(m, "quarantine") == ["k1", "k2", "k3"]
    for job, data in contents.items():
        q = m.mnt / "quarantine" / job
        assert (q / "output" / "track.flac").read_bytes() == data
        assert (q / "temp" / "scratch").read_bytes() == b"scratch"
        assert (q / ".state").read_text() == "crashed\n"
        receipt = json.loads((q / "receipt.json").read_text())
        assert receipt["state"] == "crashed" and receipt["job"] == job
        for command in (f"echo more >> quarantine/{job}/output/track.flac",
                        f"touch quarantine/{job}/output/new",
                        f"rm quarantine/{job}/temp/scratch",
                        f"mkdir quarantine/{job}/output/dir"):
            result = sh(command, cwd=m.mnt, check=False)
            assert result.returncode != 0 and "Read-only file system" in result.stderr, command
        assert (q / "output" / "track.flac").read_bytes() == data
    assert {j: r["state"] for j, r in records(m).items()} == \
        {"k1": "crashed", "k2": "crashed", "k3": "crashed", "done": "completed"}
    assert events(m, "recovered")

    # Resume one: back in workspaces/, running, writable, its files kept.
    assert "running again" in wsfs(m, "resume", "k1").stdout
    assert "k1" in listed(m) and "k1" not in listed(m, "quarantine")
    assert sh("cat workspaces/k1/.state", cwd=m.mnt).stdout == "running\n"
    sh("echo next >> workspaces/k1/output/track.flac && echo t2 > workspaces/k1/output/track2.flac", cwd=m.mnt)
    assert (m.ws / "k1" / "output" / "track.flac").read_bytes() == contents["k1"] + b"next\n"
    assert not (m.ws / "k1" / "receipt.json").exists()
    sh("echo completed > workspaces/k1/.state", cwd=m.mnt)
    receipt = json.loads((m.ws / "k1" / "receipt.json").read_text())
    assert [o["path"] for o in receipt["outputs"]] == ["output/track.flac", "output/track2.flac"]
    assert m.daemon_errors() == []


@pytest.mark.mount
def test_sigkill_with_on_crash_resume_keeps_jobs_running(mount_factory):
    m = mount_factory(config='on_crash = "resume"\n')
    contents = _start_three_jobs(m)
    m.kill9()
    m.start()
    assert listed(m) == ["k1", "k2", "k3"]
    assert listed(m, "quarantine") == []
    for job, data in contents.items():
        assert (m.ws / job / "output" / "track.flac").read_bytes() == data
        assert (m.ws / job / ".state").read_text() == "running\n"
        sh(f"echo more >> workspaces/{job}/output/track.flac", cwd=m.mnt)
    # The manifest was rebuilt from the tree: usage is right after the crash.
    usage = json.loads((m.ws / "k2" / ".job").read_text())["usage"]
    assert usage == {"bytes": len(contents["k2"]) + len("more\n") + len("scratch"), "files": 2}
    assert m.daemon_errors() == []


# -- owner liveness --------------------------------------------------------------------------------


@pytest.mark.mount
def test_job_whose_wsfs_run_is_killed_becomes_crashed(mount_factory):
    m = mount_factory()
    env = dict(os.environ, WSFS_MOUNT=str(m.mnt), PYTHONPATH=str(REPO))
    run = subprocess.Popen([sys.executable, "-m", "wsfs", "run", "--job", "own", "--", "sh", "-c",
                            'echo partial > "$WSFS_OUTPUT/part1" && exec sleep 60'],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        sleeper = wait_for("the job's command to start", lambda: [
            c for c in psutil.Process(run.pid).children() if c.name() == "sleep"])[0]
        assert json.loads((m.ws / "own" / ".job").read_text())["owner"]["pid"] == run.pid
        assert "own" not in wsfs(m, "sweep", "--dry-run").stdout  # its owner lives

        os.kill(run.pid, signal.SIGKILL)
        sleeper.kill()
    finally:
        run.kill()
        run.wait()  # reaped: the pid is free

    out = wsfs(m, "sweep").stdout
    assert re.search(rf"^own: crashed \(owner pid {run.pid} is gone\)", out, re.M), out
    assert "own" not in listed(m)
    assert listed(m, "quarantine") == ["own"]
    assert (m.mnt / "quarantine" / "own" / ".state").read_text() == "crashed\n"
    assert (m.mnt / "quarantine" / "own" / "output" / "part1").read_text() == "partial\n"
    assert json.loads((m.mnt / "quarantine" / "own" / "receipt.json").read_text())["state"] == "crashed"
    assert [e["to"] for e in events(m, "transition", "own")] == ["crashed"]

    # Resumed, it is not crashed again for the owner that is gone.
    wsfs(m, "resume", "own")
    assert "own" not in wsfs(m, "sweep").stdout
    assert (m.ws / "own" / ".state").read_text() == "running\n"
    assert m.daemon_errors() == []


@pytest.mark.mount
def test_the_sweeper_thread_crashes_an_orphaned_job_by_itself(mount_factory):
    m = mount_factory(config='sweep_interval = "1s"\n')
    child = subprocess.Popen(["sleep", "60"])
    try:
        sh(f'mkdir workspaces/orphan && echo "owner {child.pid}" > workspaces/orphan/.state', cwd=m.mnt)
    finally:
        child.kill()
        child.wait()
    wait_for("the sweeper to crash the job", lambda: records(m)["orphan"]["state"] == "crashed")
    assert listed(m, "quarantine") == ["orphan"] and listed(m) == []
    assert m.daemon_errors() == []


# -- sweep --dry-run ---------------------------------------------------------------------------------

DUE_IN_A_SECOND = """
sweep_interval = "1h"
[retention]
failed = "1s"
cancelled = "1s"
"""


@pytest.mark.mount
def test_sweep_dry_run_names_each_due_job_with_why_and_changes_nothing(mount_factory):
    m = mount_factory(config=DUE_IN_A_SECOND)
    sh("mkdir workspaces/d1 workspaces/d2 workspaces/d3 workspaces/d4 && echo x > workspaces/d1/output/x"
       " && echo 'failed oom' > workspaces/d1/.state && echo cancelled > workspaces/d2/.state"
       " && echo completed > workspaces/d4/.state", cwd=m.mnt)

    def dry_run_names_both():
        out = wsfs(m, "sweep", "--dry-run").stdout
        return out if "d1:" in out and "d2:" in out else None
    before = records(m)
    out = wait_for("d1 and d2 to be due", dry_run_names_both)
    assert re.search(r"^d1: would hide \(failed for \d+s, policy failed=1s, grace 1d\)$", out, re.M), out
    assert re.search(r"^d2: would hide \(cancelled for \d+s, policy cancelled=1s, grace 1d\)$", out, re.M), out
    assert "d3" not in out and "d4" not in out
    assert re.search(r"^sweep \(dry run\): 2 hide in [\d.]+ ms$", out, re.M), out
    sh("echo 'sweep dry-run' > .wsfs/control", cwd=m.mnt)
    assert records(m) == before
    assert listed(m) == ["d1", "d2", "d3", "d4"]
    assert not events(m, "hidden")

    out = wsfs(m, "sweep").stdout
    assert re.search(r"^d1: hidden \(failed for", out, re.M) and re.search(r"^d2: hidden", out, re.M), out
    assert listed(m) == ["d3", "d4"]
    assert (m.data / "jobs" / "d1" / "output" / "x").read_text() == "x\n"
    report = json.loads(wsfs(m, "sweep", "--dry-run", "--json").stdout)
    assert report["dry_run"] is True and report["actions"] == []  # purge is a day away

    result = sh("echo 'sweep now' > .wsfs/control", cwd=m.mnt, check=False)
    assert result.returncode != 0 and "Invalid argument" in result.stderr
    assert m.daemon_errors() == []


# -- configuration --------------------------------------------------------------------------------


@pytest.mark.mount
def test_crash_during_recovery_is_finished_by_the_mount_after(mount_factory):
    m = mount_factory(env={"WSFS_FAULT": "after:quarantine"})
    contents = _start_three_jobs(m)
    m.kill9()
    with pytest.raises(RuntimeError, match="exited"):
        m.start()  # recovery quarantines k1 and dies right after that step
    assert "WSFS_FAULT: dying after step quarantine" in m.log_text()
    m.env = {}  # no fault this time
    m.start()
    assert "finishing the interrupted crashed" in m.log_text()
    assert listed(m) == [] and listed(m, "quarantine") == ["k1", "k2", "k3"]
    for job, data in contents.items():
        assert (m.mnt / "quarantine" / job / "output" / "track.flac").read_bytes() == data
        assert (m.mnt / "quarantine" / job / ".state").read_text() == "crashed\n"
        assert json.loads((m.mnt / "quarantine" / job / "receipt.json").read_text())["state"] == "crashed"
    assert [e["to"] for e in events(m, "transition") if e["to"] == "crashed"] == ["crashed"] * 3
    assert [line for line in m.daemon_errors() if "WSFS_FAULT" not in line] == []
