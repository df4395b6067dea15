"""The ``wsfs`` command (docs/spec.md §10): click's CliRunner for output and exit codes,
and real subprocesses against a real mount for what a user's shell sees.

Exit codes: 0 done, 1 error, 2 usage.  ``wsfs run`` is only run as a
subprocess: it installs signal handlers that would outlive a CliRunner call.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import wsfs_cli

from wsfs.client.cli import main

JOB_ID_RE = re.compile(r"job_\d{8}_\d{6}_[0-9a-f]{4}")


@pytest.fixture(autouse=True)
def _logging_restored(keep_logging):
    """The CLI's ``main`` reconfigures the root logger: conftest's ``keep_logging`` puts it back."""


def cli(*args, env=None) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


wsfs = wsfs_cli  # ``wsfs ARGS`` as a separate process, as a user's shell runs it


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())


def state_of(job_dir) -> str:
    return (Path(job_dir) / ".state").read_text().strip()


def jobs_of(m) -> dict[str, dict]:
    lines = (m.mnt / ".wsfs" / "jobs").read_text().splitlines()
    return {r["id"]: r for r in map(json.loads, lines)}


# -- create ---------------------------------------------------------------------------


@pytest.mark.mount
def test_create_prints_the_workspace_path(wsfs_mount):
    m = wsfs_mount
    mnt = str(m.mnt)
    result = cli("create", "render-42", "--mount", mnt)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(m.ws / "render-42")
    assert sorted(os.listdir(m.ws / "render-42")) == [".job", ".manifest", ".state", "input", "output", "temp"]
    assert state_of(m.ws / "render-42") == "running"

    result = cli("create", "--mount", mnt)
    assert result.exit_code == 0, result.output
    path = Path(result.stdout.strip())
    assert path.parent == m.ws
    assert JOB_ID_RE.fullmatch(path.name), path.name
    assert path.is_dir()

    proc = wsfs("create", "--mount", mnt)
    assert proc.returncode == 0, proc.stderr
    generated = Path(proc.stdout.strip())
    assert JOB_ID_RE.fullmatch(generated.name) and generated.is_dir()
    assert generated.name != path.name

    again = cli("create", "render-42", "--mount", mnt)
    assert again.exit_code == 1
    assert "render-42" in again.stderr and "used before" in again.stderr
    # A command the daemon could not even parse still comes back with its reason.
    bad = cli("create", "../x", "--mount", mnt)
    assert bad.exit_code == 1
    assert "bad job id" in bad.stderr
    bad = cli("create", "q1", "--quota", "lots", "--mount", mnt)
    assert bad.exit_code in (1, 2)
    assert "quota" in bad.stderr and "lots" in bad.stderr
    assert not (m.ws / "q1").exists()
    assert m.daemon_errors() == []


@pytest.mark.mount
def test_create_copies_inputs_through_the_mount(wsfs_mount, tmp_path):
    m = wsfs_mount
    source = tmp_path / "luke.xml"
    source.write_text("<book/>\n" * 100)
    tree = tmp_path / "scans"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.bin").write_bytes(os.urandom(5000))
    (tree / "sub" / "b.txt").write_text("b\n")
    proc = wsfs("create", "with-inputs", "--input", str(source), "--input", str(tree), "--mount", str(m.mnt))
    assert proc.returncode == 0, proc.stderr
    job_dir = Path(proc.stdout.strip())
    assert job_dir == m.ws / "with-inputs"
    copied = {str(p.relative_to(job_dir / "input")): p.read_bytes()
              for p in (job_dir / "input").rglob("*") if p.is_file()}
    # A file as itself, a directory's contents (so that `input/*.wav` finds an album's tracks).
    assert copied == {"luke.xml": source.read_bytes(), "a.bin": (tree / "a.bin").read_bytes(), "sub/b.txt": b"b\n"}
    # Through the mount: the manifest knows them.
    manifest = {e["path"]: e for e in map(json.loads, (job_dir / ".manifest").read_text().splitlines())}
    assert {p: e["size"] for p, e in manifest.items()} == {
        "input/luke.xml": len(source.read_bytes()), "input/a.bin": 5000, "input/sub/b.txt": 2}
    assert not (m.data / "jobs" / "with-inputs" / "input" / "luke.xml").is_symlink()


# -- list and show ----------------------------------------------------------------------


@pytest.fixture
def four_jobs(wsfs_mount):
    """running ``a``, completed ``b``, failed ``c``, archived ``d``."""
    m = wsfs_mount
    for job in "abcd":
        os.mkdir(m.ws / job)
    (m.ws / "b" / "output" / "r.txt").write_text("result\n")
    (m.ws / "b" / ".state").write_text("completed\n")
    (m.ws / "c" / ".state").write_text("failed no luck\n")
    (m.ws / "d" / ".state").write_text("cancelled\n")
    (m.ws / "d" / ".state").write_text("archived\n")
    return m


@pytest.mark.mount
def test_list_table_json_state_and_all(four_jobs):
    m = four_jobs
    mnt = str(m.mnt)
    result = cli("list", "--mount", mnt)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["JOB", "STATE", "STAGE", "AGE", "USAGE", "EXPIRES", "PURGE", "PUBLISH"]
    rows = {line.split()[0]: line.split()[1] for line in lines[1:]}
    assert rows == {"a": "running", "b": "completed", "c": "failed"}

    as_json = json.loads(cli("list", "--json", "--mount", mnt).stdout)
    assert [r["id"] for r in as_json] == ["a", "b", "c"]
    assert as_json[1]["usage"] == {"bytes": 7, "files": 1}

    failed = json.loads(cli("list", "--json", "--state", "failed", "--mount", mnt).stdout)
    assert [(r["id"], r["reason"]) for r in failed] == [("c", "no luck")]
    two = json.loads(cli("list", "--json", "--state", "failed", "--state", "running", "--mount", mnt).stdout)
    assert sorted(r["id"] for r in two) == ["a", "c"]

    everything = cli("list", "--all", "--mount", mnt)
    assert everything.exit_code == 0
    rows = {line.split()[0]: line.split()[1] for line in everything.stdout.splitlines()[1:]}
    assert rows == {"a": "running", "b": "completed", "c": "failed", "d": "archived"}

    # The same from a real process, and with the mount from $WSFS_MOUNT.
    proc = wsfs("list", "--all", "--json", env={"WSFS_MOUNT": mnt})
    assert proc.returncode == 0, proc.stderr
    assert {r["id"]: r["state"] for r in json.loads(proc.stdout)} == {
        "a": "running", "b": "completed", "c": "failed", "d": "archived"}
    bad = cli("list", "--state", "bogus", "--mount", mnt)
    assert bad.exit_code == 2


@pytest.mark.mount
def test_list_with_no_jobs(wsfs_mount):
    result = cli("list", "--mount", str(wsfs_mount.mnt))
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "no jobs" in result.stderr
    assert json.loads(cli("list", "--json", "--mount", str(wsfs_mount.mnt)).stdout) == []


@pytest.mark.mount
def test_show_text_and_json(four_jobs):
    m = four_jobs
    mnt = str(m.mnt)
    (m.ws / "a" / ".state").write_text("stage fetching\n")
    result = cli("show", "a", "--mount", mnt)
    assert result.exit_code == 0, result.output
    fields = {}
    for line in result.stdout.splitlines():
        key, _, value = line.strip().partition("  ")
        fields.setdefault(key, value.strip())
    assert fields["job"] == "a"
    assert fields["state"] == "running"
    assert fields["path"] == str(m.ws / "a")
    assert fields["stage"] == "fetching"

    record = json.loads(cli("show", "c", "--json", "--mount", mnt).stdout)
    assert (record["id"], record["state"], record["reason"]) == ("c", "failed", "no luck")
    assert record == read_json(m.ws / "c" / ".job")

    # An archived job has no workspace: its record still shows.
    gone = cli("show", "d", "--json", "--mount", mnt)
    assert gone.exit_code == 0, gone.output
    assert json.loads(gone.stdout)["state"] == "archived"
    text = cli("show", "d", "--mount", mnt)
    assert "archived" in text.stdout

    missing = cli("show", "nope", "--mount", mnt)
    assert missing.exit_code == 1
    assert "no job nope" in missing.stderr
    proc = wsfs("show", "b", "--json", "--mount", mnt)
    assert proc.returncode == 0 and json.loads(proc.stdout)["state"] == "completed"
    assert m.daemon_errors() == []


# -- state ---------------------------------------------------------------------------------


@pytest.mark.mount
def test_state_commands(wsfs_mount):
    m = wsfs_mount
    mnt = str(m.mnt)
    for job in ("s1", "s2", "s3"):
        os.mkdir(m.ws / job)

    result = cli("state", "s1", "completed", "--mount", mnt)
    assert result.exit_code == 0, result.output
    assert state_of(m.ws / "s1") == "completed"

    result = cli("state", "s2", "failed", "a reason", "--mount", mnt)
    assert result.exit_code == 0, result.output
    assert read_json(m.ws / "s2" / "receipt.json")["reason"] == "a reason"

    proc = wsfs("state", "s3", "failed", "out", "of", "memory", "--mount", mnt)
    assert proc.returncode == 0, proc.stderr
    assert read_json(m.ws / "s3" / ".job")["reason"] == "out of memory"

    bogus = cli("state", "s1", "bogus", "--mount", mnt)
    assert bogus.exit_code == 2
    assert "bogus" in bogus.stderr

    refused = cli("state", "s1", "failed", "--mount", mnt)
    assert refused.exit_code == 1
    assert "cannot go from completed to failed" in refused.stderr
    assert state_of(m.ws / "s1") == "completed"
    proc = wsfs("state", "s1", "cancelled", "--mount", mnt)
    assert proc.returncode == 1
    assert "cannot go from completed to cancelled" in proc.stderr

    unknown = cli("state", "nope", "completed", "--mount", mnt)
    assert unknown.exit_code == 1
    assert "nope" in unknown.stderr
    assert m.daemon_errors() == []


# -- run ------------------------------------------------------------------------------------


@pytest.mark.mount
def test_run_completes_with_the_environment_and_cwd(wsfs_mount):
    m = wsfs_mount
    script = ('echo hi > "$WSFS_OUTPUT/x"; env > "$WSFS_OUTPUT/env.txt"; pwd -P > "$WSFS_OUTPUT/cwd.txt"; '
              'ls "$WSFS_TEMP" "$WSFS_INPUT" > /dev/null && echo scratch > "$WSFS_TEMP/t"')
    proc = wsfs("run", "--job", "r1", "--mount", str(m.mnt), "--", "sh", "-c", script)
    assert proc.returncode == 0, proc.stderr
    job_dir = m.ws / "r1"
    assert state_of(job_dir) == "completed"
    assert (job_dir / "output" / "x").read_text() == "hi\n"
    env = dict(line.split("=", 1) for line in (job_dir / "output" / "env.txt").read_text().splitlines()
               if "=" in line)
    assert env["WSFS_JOB"] == "r1"
    assert env["WSFS_WORKSPACE"] == str(job_dir)
    assert env["WSFS_INPUT"] == str(job_dir / "input")
    assert env["WSFS_OUTPUT"] == str(job_dir / "output")
    assert env["WSFS_TEMP"] == str(job_dir / "temp")
    assert (job_dir / "output" / "cwd.txt").read_text().strip() == str(job_dir)
    assert not (job_dir / "temp").exists()
    receipt = read_json(job_dir / "receipt.json")
    assert receipt["owner"]["pid"] is not None  # `wsfs run` registers itself as the owner
    outputs = {o["path"]: o["sha256"] for o in receipt["outputs"]}
    assert outputs["output/x"] == hashlib.sha256(b"hi\n").hexdigest()
    assert m.daemon_errors() == []


@pytest.mark.mount
def test_run_generates_an_id(wsfs_mount):
    m = wsfs_mount
    proc = wsfs("run", "--mount", str(m.mnt), "--", "sh", "-c", 'echo "$WSFS_JOB" > "$WSFS_OUTPUT/id"')
    assert proc.returncode == 0, proc.stderr
    [job] = jobs_of(m)
    assert JOB_ID_RE.fullmatch(job)
    assert (m.ws / job / "output" / "id").read_text().strip() == job
    assert state_of(m.ws / job) == "completed"


@pytest.mark.mount
def test_run_failures_fail_the_job(wsfs_mount):
    m = wsfs_mount
    mnt = str(m.mnt)
    proc = wsfs("run", "--job", "r3", "--mount", mnt, "--", "sh", "-c", "echo partial > $WSFS_TEMP/p; exit 3")
    assert proc.returncode == 3
    assert state_of(m.ws / "r3") == "failed"
    assert read_json(m.ws / "r3" / "receipt.json")["reason"] == "exit status 3"
    assert (m.ws / "r3" / "temp" / "p").read_text() == "partial\n"  # kept for debugging

    proc = wsfs("run", "--job", "r9", "--mount", mnt, "--", "sh", "-c", "kill -9 $$")
    assert proc.returncode == 128 + 9
    assert state_of(m.ws / "r9") == "failed"
    assert "SIGKILL" in read_json(m.ws / "r9" / ".job")["reason"]

    proc = wsfs("run", "--job", "r127", "--mount", mnt, "--", "/nonexistent/program")
    assert proc.returncode == 127
    assert state_of(m.ws / "r127") == "failed"
    assert "could not start" in proc.stderr

    taken = wsfs("run", "--job", "r3", "--mount", mnt, "--", "true")
    assert taken.returncode == 1
    assert "used before" in taken.stderr
    assert m.daemon_errors() == []


# -- config, help, no mount --------------------------------------------------------------------


