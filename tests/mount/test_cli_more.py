"""More of the ``wsfs`` command (docs/spec.md §10): events, doctor, sweep, restore, resume, status, config.

CliRunner for output and exit codes (0 done, 1 error, 2 usage); ``events
--follow`` runs as a real process, stopped by a signal as a user would.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import REPO, passthrough_of, sh

from wsfs.client import cli as cli_module
from wsfs.client.cli import main

WAIT = 30.0
TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"


@pytest.fixture(autouse=True)
def _logging_restored(keep_logging):
    """The CLI's ``main`` reconfigures the root logger: conftest's ``keep_logging`` puts it back."""


def cli(*args, env=None, color=False):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False, color=color)


def jobs_of(mnt: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, (mnt / ".wsfs" / "jobs").read_text().splitlines())}


# -- events -------------------------------------------------------------------------------------------------


@pytest.mark.mount
def test_events_readable_json_by_job_and_latest(wsfs_mount):
    m = wsfs_mount
    mnt = str(m.mnt)
    assert cli("create", "ev1", "--mount", mnt).exit_code == 0
    sh("echo 'stage render' > workspaces/ev1/.state && echo completed > workspaces/ev1/.state", cwd=m.mnt)
    sh("mkdir workspaces/ev2", cwd=m.mnt)
    assert sh("echo bogus > workspaces/ev2/.state", cwd=m.mnt, check=False).returncode != 0

    result = cli("events", "--mount", mnt)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 5
    assert re.fullmatch(TIME + r"  created     ev1               template default, uid \d+", lines[0]), lines[0]
    assert re.fullmatch(TIME + r"  stage       ev1               stage render", lines[1]), lines[1]
    assert re.fullmatch(TIME + r"  transition  ev1               running -> completed", lines[2]), lines[2]
    assert re.fullmatch(TIME + r"  rejected    ev2               \.state 'bogus': EINVAL: unknown command 'bogus'.*",
                        lines[4]), lines[4]
    assert "\x1b[" not in result.stdout  # no colour in a pipe

    coloured = cli("events", "--mount", mnt, color=True)
    assert "\x1b[31mrejected" in coloured.stdout

    result = cli("events", "--job", "ev1", "-n", "2", "--mount", mnt)
    assert result.exit_code == 0
    assert [ln.split()[2] for ln in result.stdout.splitlines()] == ["stage", "transition"]

    result = cli("events", "--json", "--mount", mnt)
    raw = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["kind"] for e in raw] == ["created", "stage", "transition", "created", "rejected"]
    assert raw[2]["from"] == "running" and raw[2]["to"] == "completed" and raw[0]["seq"] < raw[1]["seq"]
    assert result.stdout.splitlines()[0] == json.dumps(raw[0], sort_keys=True)

    assert cli("events", "--job", "nosuch", "--mount", mnt).stdout == ""
    assert cli("events", "-n", "-1", "--mount", mnt).exit_code == 2


def _lines_of(proc) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump():
        for line in proc.stdout:
            lines.put(line)
    threading.Thread(target=pump, daemon=True).start()
    return lines


def _wait_line(lines, needle: str, seen: list[str]) -> str:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        seen.append(line)
        if needle in line:
            return line
    raise AssertionError(f"no line with {needle!r} within {WAIT}s; saw {seen}")


@pytest.mark.mount
def test_events_follow_prints_new_events_until_stopped(wsfs_mount):
    m = wsfs_mount
    sh("mkdir workspaces/before", cwd=m.mnt)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "wsfs", "events", "--follow", "--job", "fol", "--mount",
                             str(m.mnt)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines, seen = _lines_of(proc), []
        sh("mkdir workspaces/fol", cwd=m.mnt)
        assert re.fullmatch(TIME + r"  created     fol               template default, uid \d+\n",
                            _wait_line(lines, "created", seen))
        sh("mkdir workspaces/other && echo 'failed out of disk' > workspaces/fol/.state", cwd=m.mnt)
        assert _wait_line(lines, "transition", seen).rstrip().endswith("running -> failed (out of disk)")
        assert not any("before" in line or "other" in line for line in seen)  # --job filters
        proc.send_signal(signal.SIGINT)  # Ctrl-C: a quiet, successful end
        assert proc.wait(timeout=WAIT) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=WAIT)


@pytest.mark.mount
def test_events_follow_in_json_stops_on_sigterm(wsfs_mount):
    m = wsfs_mount
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "wsfs", "events", "-f", "--json", "-n", "0", "--mount",
                             str(m.mnt)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        lines, seen = _lines_of(proc), []
        sh("mkdir workspaces/js", cwd=m.mnt)
        event = json.loads(_wait_line(lines, '"created"', seen))
        assert event["job"] == "js" and event["kind"] == "created"
        proc.terminate()
        assert proc.wait(timeout=WAIT) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- sweep, restore, resume -------------------------------------------------------------------------------

SWEEP_CONFIG = """
sweep_interval = "1h"
[retention]
failed = "0s"
cancelled = "0s"
grace = "1h"
"""


@pytest.mark.mount
def test_sweep_restore_resume(mount_factory):
    m = mount_factory(config=SWEEP_CONFIG)
    mnt = str(m.mnt)
    sh("mkdir workspaces/f1 workspaces/c1 workspaces/r1 && echo 'failed boom' > workspaces/f1/.state "
       "&& echo cancelled > workspaces/c1/.state", cwd=m.mnt)

    result = cli("sweep", "--dry-run", "--mount", mnt)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert sorted(lines[:-1]) == ["c1: would hide (cancelled for 0s, policy cancelled=0s, grace 1h)",
                                  "f1: would hide (failed for 0s, policy failed=0s, grace 1h)"]
    assert re.fullmatch(r"sweep \(dry run\): 2 hide in \d+\.\d ms", lines[-1]), lines[-1]
    assert not jobs_of(m.mnt)["f1"]["hidden"]  # a dry run changes nothing

    result = cli("sweep", "--json", "--mount", mnt)
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["counts"] == {"hide": 2} and report["dry_run"] is False
    assert all(a["done"] for a in report["actions"])
    assert jobs_of(m.mnt)["f1"]["hidden"] and "f1" not in os.listdir(m.ws)

    result = cli("restore", "f1", "--mount", mnt)
    assert result.exit_code == 0 and result.stdout == "f1: restored\n"
    assert "f1" in os.listdir(m.ws) and not jobs_of(m.mnt)["f1"]["hidden"]

    result = cli("restore", "f1", "--mount", mnt)
    assert result.exit_code == 1
    assert result.stderr == "wsfs: job f1 is not hidden (Operation not permitted)\n"
    result = cli("restore", "nosuch", "--mount", mnt)
    assert result.exit_code == 1 and result.stderr == "wsfs: no job nosuch (No such file or directory)\n"

    result = cli("resume", "f1", "--mount", mnt)
    assert result.exit_code == 0 and result.stdout == "f1: running again\n"
    assert (m.ws / "f1" / ".state").read_text() == "running\n"
    result = cli("resume", "r1", "--mount", mnt)
    assert result.exit_code == 1
    assert result.stderr == "wsfs: cannot go from running to running (Operation not permitted)\n"
    result = cli("resume", "c1", "--mount", mnt)  # cancelled is final (docs/spec.md §4)
    assert result.exit_code == 1
    assert result.stderr == "wsfs: cannot go from cancelled to running (Operation not permitted)\n"
    assert cli("resume", "--mount", mnt).exit_code == 2  # JOB is required


@pytest.mark.mount
def test_sweep_shows_progress_while_it_purges(mount_factory, monkeypatch):
    m = mount_factory(config=SWEEP_CONFIG.replace('grace = "1h"', 'grace = "1s"'))
    mnt = str(m.mnt)
    sh("for j in p1 p2 p3; do mkdir workspaces/$j && echo failed > workspaces/$j/.state; done", cwd=m.mnt)
    assert json.loads(cli("sweep", "--json", "--mount", mnt).stdout)["counts"] == {"hide": 3}
    mount = cli_module.Mount(mnt)
    deadline = time.monotonic() + WAIT
    while cli_module._due_purges(mount) < 3:  # the 1 s grace has to pass
        assert time.monotonic() < deadline, "the grace never ended"
        time.sleep(0.1)

    monkeypatch.setattr(cli_module, "interactive", lambda: True)
    result = cli("sweep", "--mount", mnt)
    assert result.exit_code == 0, result.output
    assert "purging" in result.stderr  # click's bar (hidden when not on a terminal: just its label)
    assert sorted(result.stdout.splitlines()[:-1])[0].startswith("p1: purged (failed for ")
    assert result.stdout.splitlines()[-1].startswith("sweep: 3 purge in ")
    assert {j: r["purged_at"] is not None for j, r in jobs_of(m.mnt).items()} == {"p1": True, "p2": True, "p3": True}


# -- status, create --json, completion, colours ------------------------------------------------------------


@pytest.mark.mount
def test_status_text_and_json(wsfs_mount):
    m = wsfs_mount
    sh("mkdir workspaces/s1 workspaces/s2 && echo 12345 > workspaces/s1/output/f && echo completed > "
       "workspaces/s1/.state", cwd=m.mnt)
    sh("echo nonsense > .wsfs/control", cwd=m.mnt, check=False)
    result = cli("status", "--json", "--mount", str(m.mnt))
    assert result.exit_code == 0
    st = json.loads(result.stdout)
    for key in ("version", "uptime_s", "jobs", "used", "free_bytes", "total_bytes", "last_sweep", "counters",
                "trash_entries", "pid", "mountpoint", "data_dir"):
        assert key in st, key
    assert st["jobs"] == {"completed": 1, "running": 1}
    assert st["used"] == {"bytes": 6, "files": 1}
    assert st["counters"]["rejected_writes"] == 1 and st["counters"]["failed_removals"] == 0

    text = cli("status", "--mount", str(m.mnt)).stdout.splitlines()
    assert text[0].startswith(f"      wsfs  {st['version']} on {m.mnt} (pid {st['pid']}, up ")
    assert "      jobs  1 completed, 1 running" in text and "      used  6B in 1 files" in text
    assert "  rejected  1 writes" in text and "last sweep  not yet (every 1m)" in text
    fuse = f"libfuse {st['fuse']['libfuse']}, passthrough {passthrough_of(m.mnt)}, readdirplus on, POSIX ACLs "
    assert f"      fuse  {fuse}" in "\n".join(text)

    cli("sweep", "--mount", str(m.mnt))
    st = json.loads(cli("status", "--json", "--mount", str(m.mnt)).stdout)
    assert st["last_sweep"]["counts"] == {} and st["last_sweep"]["dry_run"] is False


@pytest.mark.mount
def test_create_json_and_job_completion(wsfs_mount):
    m = wsfs_mount
    result = cli("create", "cj", "--json", "--mount", str(m.mnt))
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"job": "cj", "path": str(m.ws / "cj")}
    cli("create", "cz", "--mount", str(m.mnt))
    env = {"_WSFS_COMPLETE": "bash_complete", "COMP_WORDS": "wsfs show c", "COMP_CWORD": "2",
           "WSFS_MOUNT": str(m.mnt)}
    result = CliRunner().invoke(main, [], env=env, prog_name="wsfs")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == ["plain,cj", "plain,cz"]
    env["COMP_WORDS"] = "wsfs events --job cz"
    env["COMP_CWORD"] = "3"
    assert CliRunner().invoke(main, [], env=env, prog_name="wsfs").stdout.splitlines() == ["plain,cz"]


@pytest.mark.mount
def test_list_is_coloured_only_on_a_terminal(wsfs_mount):
    m = wsfs_mount
    sh("mkdir workspaces/l1 workspaces/l2 && echo 'failed x' > workspaces/l2/.state", cwd=m.mnt)
    plain = cli("list", "--mount", str(m.mnt)).stdout
    assert "\x1b[" not in plain
    header, *rows = plain.splitlines()
    assert header.split() == ["JOB", "STATE", "STAGE", "AGE", "USAGE", "EXPIRES", "PURGE", "PUBLISH"]
    assert [r.split()[:2] for r in rows] == [["l1", "running"], ["l2", "failed"]]
    assert rows[0].index("running") == header.index("STATE")  # aligned
    coloured = cli("list", "--mount", str(m.mnt), color=True).stdout
    assert "\x1b[36mrunning" in coloured and "\x1b[31mfailed" in coloured


# -- config ------------------------------------------------------------------------------------------------


# -- doctor without a daemon (--data) ----------------------------------------------------------------------


@pytest.mark.mount
def test_doctor_on_a_data_dir_with_no_daemon(mount_factory, tmp_path):
    m = mount_factory()
    sh("mkdir workspaces/d1 workspaces/d2 && echo a > workspaces/d1/output/a && echo b > workspaces/d2/output/b "
       "&& echo completed > workspaces/d2/.state", cwd=m.mnt)

    result = cli("doctor", "--data", str(m.data))  # the daemon holds the data dir
    assert result.exit_code == 1
    assert result.stderr == (f"wsfs: data dir {m.data} is in use by a running wsfs daemon (pid {m.proc.pid}, "
                             f"mounted on {m.mnt}): run `wsfs doctor --mount {m.mnt}`\n")

    m.stop()
    for name in os.listdir(m.data / "trash"):  # what the trash thread had not reached before the stop
        shutil.rmtree(m.data / "trash" / name)
    result = cli("doctor", "--data", str(m.data))
    assert result.exit_code == 0 and result.stdout == "doctor: clean\n"

    shutil.rmtree(m.data / "jobs" / "d1")
    (m.data / "quarantine" / "lost+found").mkdir()
    (m.data / "quarantine" / "lost+found" / "core").write_bytes(b"\0" * 10)
    os.truncate(m.data / "jobs" / "d2" / "output" / "b", 0)

    result = cli("doctor", "--data", str(m.data))
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        "orphan-tree: lost+found: quarantine/lost+found: a tree without a record (1 file, 10B)",
        "missing-tree: d1: its record (running) says workspaces/d1, and there is no tree",
        "manifest: d2: 1 file changed since the manifest saw them (output/b)",
        "doctor: 3 problem(s) (1 manifest, 1 missing-tree, 1 orphan-tree); `wsfs doctor --repair` fixes them",
    ]
    result = cli("doctor", "--data", str(m.data), "--repair", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["remaining"] == 0 and sorted(report["actions"]) == [
        "d1: tree missing: ended crashed and marked purged",
        "d2: rebuilt the manifest from the files (1 files, 0 bytes)",
        "quarantine/lost+found: adopted as lost_found into quarantine/lost_found as a crashed job, with a receipt",
    ]
    result = cli("doctor", "--data", str(m.data))
    assert result.exit_code == 0 and result.stdout == "doctor: clean\n"

    m.start()  # the repaired data dir mounts, and shows what doctor did
    assert (m.mnt / "quarantine" / "lost_found" / ".state").read_text() == "crashed\n"
    assert jobs_of(m.mnt)["d1"]["purged_at"] is not None
    assert cli("doctor", "--mount", str(m.mnt)).exit_code == 0


