"""What a new user meets first, through a real mount and real processes: ``wsfs run`` that
tells the truth, ``create --input`` into any template, reasons that never keep a job running,
receipts after the tree is gone, ``.job`` as a documented document, finding the mount.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, events, sh, wsfs_cli

pytestmark = pytest.mark.mount

ALBUM = '[templates.album]\nareas = { source = "input", processed = "keep", work = "scratch" }\n'


wsfs = wsfs_cli


def job(m, name: str) -> dict:
    return json.loads((m.ws / name / ".job").read_text())


def test_run_with_inputs_placeholders_and_here(mount_factory, tmp_path):
    m = mount_factory()
    (tmp_path / "in.wav").write_bytes(b"RIFF....WAVE")
    # The README's example: the input copied in, paths relative to the workspace.
    r = wsfs("run", "--job", "transcode-7", "--input", "in.wav", "--mount", str(m.mnt), "--",
             "cp", "input/in.wav", "output/out.flac", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    receipt = json.loads((m.ws / "transcode-7" / "receipt.json").read_text())
    assert [o["path"] for o in receipt["outputs"]] == ["output/out.flac"]
    # --here: the caller's relative paths; {output} expanded by wsfs, not by the caller's shell.
    r = wsfs("run", "--job", "transcode-8", "--here", "--mount", str(m.mnt), "--",
             "cp", "in.wav", "{output}/out.flac", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (m.ws / "transcode-8" / "output" / "out.flac").read_bytes() == b"RIFF....WAVE"
    assert job(m, "transcode-8")["state"] == "completed"


def test_run_exits_non_zero_when_the_job_did_not_end_as_its_status_says(mount_factory):
    m = mount_factory()
    r = wsfs("run", "--job", "sneaky", "--mount", str(m.mnt), "--",
             "sh", "-c", 'echo "cancelled by hand" > "$WSFS_WORKSPACE/.state"; exit 0')
    assert r.returncode == 1
    assert "did not end completed" in r.stderr and "cancelled" in r.stderr
    assert job(m, "sneaky")["state"] == "cancelled"


@pytest.mark.parametrize("ignores", [False, True])
def test_sigterm_cancels_the_job_forwards_and_exits_128_plus_n(mount_factory, tmp_path, ignores):
    m = mount_factory()
    trap = "trap '' TERM; " if ignores else "trap 'echo got-term > \"$WSFS_OUTPUT/term\"; exit 3' TERM; "
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "wsfs", "run", "--job", "long", "--kill-after", "1s",
                             "--mount", str(m.mnt), "--", "bash", "-c", trap + "touch \"$WSFS_TEMP/up\"; "
                             "while :; do sleep 0.1; done"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not (m.ws / "long" / "temp" / "up").exists():
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.05)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 128 + signal.SIGTERM
        if ignores:
            assert time.monotonic() - started >= 0.9  # killed after the grace, not at once
    finally:
        if proc.poll() is None:
            proc.kill()
    record = job(m, "long")
    assert (record["state"], record["reason"]) == ("cancelled", "SIGTERM")
    if not ignores:
        assert (m.ws / "long" / "output" / "term").read_text() == "got-term\n"


def test_reasons_with_newlines_or_too_long_end_the_job_and_keep_the_whole_text(mount_factory):
    m = mount_factory()
    from wsfs.client import Workspace

    ws = Workspace.create(m.mnt, "nl")
    ws.fail("line one\nline two")
    assert (ws.state, ws.info()["reason"]) == ("failed", "line one | line two")
    long_text = "x" * 5000 + "\nthe end"
    r = wsfs("run", "--job", "big", "--mount", str(m.mnt), "--", "true")
    assert r.returncode == 0
    sh('echo "create big2" > .wsfs/control', cwd=m.mnt)
    r = wsfs("state", "big2", "failed", long_text, "--mount", str(m.mnt))
    assert r.returncode == 0, r.stderr
    reason = job(m, "big2")["reason"]
    assert len(reason) <= 1024 and "cut: 5010 characters" in reason  # "x" * 5000 + " | the end"
    assert [e["text"] for e in events(m, "note", "big2")] == [long_text]


def test_create_input_goes_to_the_templates_input_area_and_checks_come_first(mount_factory, tmp_path):
    m = mount_factory(config=ALBUM)
    album = tmp_path / "album"
    album.mkdir()
    for n in (1, 2):
        (album / f"{n:02d}.wav").write_bytes(b"wav%d" % n)
    r = wsfs("create", "album-1", "--template", "album", "--input", str(album), "--mount", str(m.mnt))
    assert r.returncode == 0, r.stderr
    ws = Path(r.stdout.strip())
    assert sorted(p.name for p in ws.glob("source/*.wav")) == ["01.wav", "02.wav"]  # the seed-002 loop
    # An unknown template, or no input area, fails before the id is taken: the same id works after.
    r = wsfs("create", "album-2", "--template", "albun", "--input", str(album), "--mount", str(m.mnt))
    assert r.returncode == 1 and "no template 'albun'" in r.stderr
    r = wsfs("create", "album-2", "--template", "album", "--input", str(tmp_path / "missing"), "--mount", str(m.mnt))
    assert r.returncode == 2 and "does not exist" in r.stderr
    assert not (m.ws / "album-2").exists()
    r = wsfs("create", "album-2", "--template", "album", "--mount", str(m.mnt))
    assert r.returncode == 0, r.stderr


def test_show_receipt_after_the_tree_is_gone(mount_factory):
    m = mount_factory()
    sh("mkdir workspaces/gone && echo out > workspaces/gone/output/o && echo completed > workspaces/gone/.state "
       "&& echo archived > workspaces/gone/.state", cwd=m.mnt)
    assert not (m.ws / "gone").exists()
    r = wsfs("show", "gone", "--receipt", "--mount", str(m.mnt))
    assert r.returncode == 0, r.stderr
    receipt = json.loads(r.stdout)
    assert receipt["state"] == "completed" and [o["path"] for o in receipt["outputs"]] == ["output/o"]
    assert json.loads(sh("cat .wsfs/receipts/gone", cwd=m.mnt).stdout) == receipt
    r = wsfs("show", "never", "--receipt", "--mount", str(m.mnt))
    assert r.returncode == 1 and "no" in r.stderr


def test_job_document_has_a_version_and_only_documented_fields(mount_factory):
    from wsfs.core.lifecycle import JOB_DOCUMENT_FIELDS

    m = mount_factory()
    sh("mkdir workspaces/doc", cwd=m.mnt)
    document = job(m, "doc")
    assert document["version"] == 1
    expected = {"version", "location", "ending", *JOB_DOCUMENT_FIELDS,
                *(f"{k}_iso" for k in ("created", "state_since", "ended", "expires_at"))}
    assert set(document) == expected
    assert (document["location"], document["ending"], document["sealed"]) == ("workspaces", None, False)


def test_the_cli_finds_the_one_mount_and_names_them_when_there_are_several(mount_factory, tmp_path):
    m = mount_factory()
    sh("mkdir workspaces/found", cwd=m.mnt)
    r = wsfs("list", cwd=tmp_path)  # no --mount, no $WSFS_MOUNT
    if r.returncode == 0:
        assert "found" in r.stdout
    else:  # another wsfs mount on this machine (a service): the message names both
        assert "wsfs mounts" in r.stderr and str(m.mnt) in r.stderr
    second = mount_factory()
    r = wsfs("list", cwd=tmp_path)
    assert r.returncode == 1 and str(m.mnt) in r.stderr and str(second.mnt) in r.stderr
    assert "--mount" in r.stderr
    assert wsfs("list", env={"WSFS_MOUNT": str(m.mnt)}).returncode == 0


def test_a_stopped_daemon_is_called_gone_and_wait_waits_for_the_mount(mount_factory, tmp_path):
    m = mount_factory()
    sh("mkdir workspaces/here", cwd=m.mnt)
    m.kill9()
    try:
        r = wsfs("show", "here", "--mount", str(m.mnt))
        assert r.returncode == 1 and "is gone" in r.stderr and "no job" not in r.stderr
        r = wsfs("run", "--job", "after", "--mount", str(m.mnt), "--", "true")
        assert r.returncode == 1 and "is gone" in r.stderr
        r = wsfs("wait", "--timeout", "0.5s", "--mount", str(m.mnt))
        assert r.returncode == 1 and "waited" in r.stderr
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(m.mnt)], capture_output=True)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    waiter = subprocess.Popen([sys.executable, "-m", "wsfs", "wait", "--timeout", "60s", "--mount", str(m.mnt)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        assert waiter.poll() is None
        m.proc = None
        m.start()
        assert waiter.wait(30) == 0
    finally:
        if waiter.poll() is None:
            waiter.kill()
