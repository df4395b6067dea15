"""Publishing and hooks through a real mount: a shell ends the job, the daemon publishes afterwards.

Covers what the publishing issue names: ``.state`` returns before the
publisher runs, a SIGKILL with a publish pending finished by the next mount,
a hook of a non-root job that cannot write as root, and the CLI
(``wsfs publish --retry``, ``wsfs list --publish failed``).  No timed
assertion: every wait polls with a deadline.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import NOBODY, as_nobody, events, sh, wait_until
from test_cli import wsfs

pytestmark = pytest.mark.mount

DEADLINE = 30.0


def wait_for(predicate, what: str, timeout: float = DEADLINE):
    return wait_until(predicate, what, timeout)


def jobs(m) -> dict[str, dict]:
    text = (m.mnt / ".wsfs" / "jobs").read_text()
    return {r["id"]: r for r in map(json.loads, text.splitlines())}


def publish_of(m, job: str) -> dict | None:
    return jobs(m)[job].get("publish")


def publish_settled(m, job: str):
    publish = publish_of(m, job)
    return publish if publish and publish["status"] != "pending" else None


def files_under(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_state_returns_at_once_and_publishing_follows(mount_factory, tmp_path):
    gate, started, lib = tmp_path / "gate", tmp_path / "started", tmp_path / "lib"
    m = mount_factory(config=f"""
[templates.default]
publish = [{{ area = "output", to = "{lib}/{{job}}", mode = "move" }}]
on_completed = 'touch {started}; while [ ! -e {gate} ]; do sleep 0.05; done; ls "$WSFS_PUBLISHED_OUTPUT"'
hook_timeout = "60s"
""")
    sh("mkdir workspaces/song && cd workspaces/song && mkdir -p output/cd1 && "
       "for i in 1 2 3; do echo track $i > output/cd1/t$i.flac; done && echo src > input/a.wav", cwd=m.mnt)
    sh("echo completed > workspaces/song/.state", cwd=m.mnt)
    # The write returned while the hook is still held at its gate: publishing runs after .state.
    job_doc = json.loads((m.ws / "song" / ".job").read_text())
    assert job_doc["state"] == "completed" and job_doc["publish"]["status"] == "pending"
    wait_for(started.exists, "the hook to start")
    assert publish_of(m, "song")["status"] == "pending"
    gate.touch()
    publish = wait_for(lambda: publish_settled(m, "song"), "publishing to finish")
    assert publish["status"] == "done" and publish["moved"] == ["output"]
    assert files_under(lib / "song") == {f"cd1/t{i}.flac": f"track {i}\n".encode() for i in (1, 2, 3)}
    assert not (m.ws / "song" / "output").exists()
    assert (m.ws / "song" / "input" / "a.wav").read_text() == "src\n"
    (hook,) = events(m, "hook", "song")
    assert hook["exit"] == 0 and hook["output"] == "cd1\n"
    listing = wsfs("list", env={"WSFS_MOUNT": str(m.mnt)})
    assert listing.returncode == 0 and "PUBLISH" in listing.stdout and "done" in listing.stdout
    assert m.daemon_errors() == []


def test_a_pending_publish_survives_sigkill_and_the_next_mount_finishes_it(mount_factory, tmp_path):
    lib = tmp_path / "lib"
    m = mount_factory(config=f"""
[templates.default]
publish = [{{ area = "output", to = "{lib}/{{job}}" }}]
on_completed = "echo uploaded $WSFS_JOB"
[templates.default.retention]
completed = "after-publish"
""")
    m.restart({"WSFS_FAULT": "publish:after-copy"})
    sh("mkdir workspaces/story && mkdir -p workspaces/story/output/v && "
       "head -c 3000000 /dev/urandom > workspaces/story/output/v/video.mp4 && echo meta > workspaces/story/output/m",
       cwd=m.mnt)
    expected = files_under(m.ws / "story" / "output")
    sh("echo completed > workspaces/story/.state", cwd=m.mnt)
    wait_for(lambda: m.proc.poll() is not None, "the daemon to die at the fault point")
    offset = len(m.log_text())
    m.stop()
    m.start()  # no fault this time
    publish = wait_for(lambda: publish_settled(m, "story"), "the next mount to finish publishing")
    assert publish["status"] == "done", publish
    assert files_under(lib / "story") == expected
    assert sorted(os.listdir(lib)) == ["story"]
    assert [e["outcome"] for e in events(m, "published", "story")] == ["already there"]
    assert [e["output"] for e in events(m, "hook", "story")] == ["uploaded story\n"]
    # completed = "after-publish": the workspace is gone, the record stays
    record = jobs(m)["story"]
    assert record["state"] == "completed" and record["where"] is None and publish["deleted_at"]
    assert not (m.ws / "story").exists()
    assert m.daemon_errors(offset) == []


@pytest.fixture
def shared(mount_factory, tmp_path):
    rootonly = tmp_path / "rootonly"
    rootonly.mkdir(mode=0o700)
    m = mount_factory(allow_other=True, config=f"""
[templates.default]
on_completed = 'id -u; cat output/f; touch {rootonly}/owned-by-hook'
publish_retries = 0
[templates.pub]
areas = {{ output = "keep" }}
publish = [{{ area = "output", to = "{rootonly}/lib/{{job}}" }}]
publish_retries = 0
""")
    if as_nobody("true", "/").returncode != 0:
        pytest.skip("setpriv cannot switch to uid 65534 here")
    return m, rootonly


def settled_as_nobody(m, job: str, make: str) -> dict:
    """Nobody makes ``job`` (the shell line ``make``), writes ``output/f`` and completes it; its
    publishing, once settled."""
    result = as_nobody(f"set -e; {make}; echo mine > workspaces/{job}/output/f; "
                       f"echo completed > workspaces/{job}/.state", cwd=m.mnt)
    assert result.returncode == 0, result.stderr
    return wait_for(lambda: publish_settled(m, job), f"the publishing of {job} to settle")


def test_a_hook_of_a_non_root_job_cannot_write_as_root(shared):
    m, rootonly = shared
    publish = settled_as_nobody(m, "userjob", "mkdir workspaces/userjob")
    assert publish["status"] == "failed" and publish["hooks"]["on_completed"]["status"] == "failed"
    (hook,) = events(m, "hook", "userjob")
    assert hook["uid"] == NOBODY and hook["exit"] != 0
    lines = hook["output"].splitlines()
    assert lines[:2] == [str(NOBODY), "mine"]  # ran as the owner, in its workspace
    assert "Permission denied" in hook["output"]
    assert not (rootonly / "owned-by-hook").exists()


def test_publishing_for_a_non_root_job_writes_with_the_owners_rights(shared):
    m, rootonly = shared
    publish = settled_as_nobody(m, "upjob", "echo 'create upjob template=pub' > .wsfs/control")
    assert publish["status"] == "failed" and "Permission denied" in publish["error"]
    assert not (rootonly / "lib").exists()
    assert (m.ws / "upjob" / "output" / "f").read_text() == "mine\n"  # a failed publish keeps the workspace


def test_cli_lists_failed_publishes_and_retries(mount_factory, tmp_path):
    gate, lib = tmp_path / "gate", tmp_path / "lib"
    m = mount_factory(config=f"""
[templates.default]
publish = [{{ area = "output", to = "{lib}/{{job}}" }}]
on_completed = 'test -e {gate} || {{ echo "upload refused"; exit 7; }}'
publish_retries = 1
publish_backoff = "0.2s"
""")
    env = {"WSFS_MOUNT": str(m.mnt)}
    sh("mkdir workspaces/up1 && echo v > workspaces/up1/output/v && mkdir workspaces/ok1", cwd=m.mnt)
    sh("echo completed > workspaces/up1/.state", cwd=m.mnt)
    publish = wait_for(lambda: publish_settled(m, "up1"), "two attempts to fail")
    assert publish["status"] == "failed" and publish["attempts"] == 2
    assert publish["error"] == "on_completed: exit status 7"
    assert [e["output"] for e in events(m, "hook", "up1")] == ["upload refused\n"] * 2
    failed = wsfs("list", "--publish", "failed", env=env)
    assert failed.returncode == 0, failed.stderr
    rows = failed.stdout.splitlines()[1:]
    assert len(rows) == 1 and rows[0].startswith("up1") and "FAILED (2 attempts)" in rows[0]
    again = wsfs("publish", "up1", env=env)
    assert again.returncode == 1 and "--retry" in again.stderr or "retry" in again.stderr
    gate.touch()
    retried = wsfs("publish", "up1", "--retry", env=env)
    assert retried.returncode == 0, retried.stderr
    assert "up1: published" in retried.stdout and "on_completed: done" in retried.stdout
    assert files_under(lib / "up1") == {"v": b"v\n"}
    assert wsfs("list", "--publish", "failed", env=env).stdout.strip() == ""
    running = wsfs("publish", "ok1", env=env)
    assert running.returncode == 1 and "only a completed job publishes" in running.stderr


def test_on_crashed_runs_in_quarantine_after_a_daemon_crash(mount_factory):
    m = mount_factory(config="""
[templates.default]
on_crashed = 'echo "$WSFS_JOB $WSFS_STATE in $PWD"; ls output'
""")
    sh("mkdir workspaces/w1 && echo partial > workspaces/w1/output/part1", cwd=m.mnt)
    m.kill9()
    m.stop()
    m.start()
    publish = wait_for(lambda: publish_settled(m, "w1"), "the on_crashed hook")
    assert publish["status"] == "done", publish
    (hook,) = events(m, "hook", "w1")
    assert hook["output"] == f"w1 crashed in {m.mnt}/quarantine/w1\npart1\n"
