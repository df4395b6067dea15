"""The Python API, ``wsfs.client`` (docs/spec.md §10), against a real mount.

``with Workspace.create(mount, job) as ws:`` ends ``completed`` on normal
exit and ``failed`` with the exception's text otherwise.
"""

from __future__ import annotations

import errno
import json
import re

import pytest

from wsfs.client import Mount, Workspace, WsfsClientError

pytestmark = pytest.mark.mount

JOB_ID_RE = re.compile(r"job_\d{8}_\d{6}_[0-9a-f]{4}")


def test_normal_exit_completes(wsfs_mount):
    m = wsfs_mount
    with Workspace.create(m.mnt, "j") as ws:
        assert ws.job == "j"
        assert ws.path == m.ws / "j"
        assert ws.state == "running"
        for area in (ws.input, ws.output, ws.temp):
            assert area.is_dir()
        assert (ws.input, ws.output, ws.temp) == (m.ws / "j" / "input", m.ws / "j" / "output", m.ws / "j" / "temp")
        (ws.output / "frame.png").write_bytes(b"\x89PNG" + bytes(100))
        (ws.temp / "scratch").write_text("gone soon\n")
        ws.stage("rendering")
        assert ws.info()["stage"] == "rendering"
    assert ws.state == "completed"
    assert (m.ws / "j" / ".state").read_text() == "completed\n"
    assert not ws.temp.exists()
    receipt = ws.receipt()
    assert receipt["state"] == "completed"
    assert [o["path"] for o in receipt["outputs"]] == ["output/frame.png"]
    assert receipt["stage"] == "rendering"
    assert m.daemon_errors() == []


def test_an_exception_fails_the_job_and_propagates(wsfs_mount):
    m = wsfs_mount
    with pytest.raises(ValueError, match="bad frame 12"):
        with Workspace.create(m.mnt, "k") as ws:
            (ws.output / "partial.png").write_bytes(b"half")
            (ws.temp / "state.json").write_text("{}\n")
            raise ValueError("bad frame 12")
    assert ws.state == "failed"
    reason = ws.info()["reason"]
    assert "bad frame 12" in reason
    assert ws.receipt()["reason"] == reason
    assert (ws.temp / "state.json").read_text() == "{}\n"  # kept for debugging
    with pytest.raises(OSError) as sealed:
        (ws.output / "partial.png").write_bytes(b"more")
    assert sealed.value.errno == errno.EROFS
    assert m.daemon_errors() == []


def test_a_multiline_exception_gives_a_one_line_reason(wsfs_mount):
    with pytest.raises(RuntimeError):
        with Workspace.create(wsfs_mount.mnt, "multi") as ws:
            raise RuntimeError("first line\nsecond line\x00 \x1b[31mred\x1b[0m")
    assert ws.state == "failed"
    reason = ws.info()["reason"]
    assert "first line | second line" in reason and "red" in reason
    assert all(c.isprintable() for c in reason)


def test_ending_inside_the_block_is_kept(wsfs_mount):
    with Workspace.create(wsfs_mount.mnt, "early") as ws:
        ws.cancel("not needed")
    assert ws.state == "cancelled"
    assert ws.info()["reason"] == "not needed"


def test_a_generated_id(wsfs_mount):
    m = wsfs_mount
    with Workspace.create(m.mnt) as ws:
        assert JOB_ID_RE.fullmatch(ws.job), ws.job
        assert ws.path == m.ws / ws.job
        assert ws.state == "running"
        (ws.output / "x").write_text("x")
    assert ws.state == "completed"
    other = Workspace.create(m.mnt)
    assert other.job != ws.job
    assert {r["id"] for r in Mount(m.mnt).jobs()} == {ws.job, other.job}
    assert other.state == "running"


def test_refusals_carry_the_daemons_reason(wsfs_mount, tmp_path):
    m = wsfs_mount
    Workspace.create(m.mnt, "dup").complete()
    with pytest.raises(WsfsClientError) as exists:
        Workspace.create(m.mnt, "dup")
    assert exists.value.errno == errno.EEXIST
    assert "dup" in str(exists.value)

    ws = Workspace(m.mnt, "dup")
    with pytest.raises(WsfsClientError) as refused:
        ws.fail("too late")
    assert refused.value.errno == errno.EPERM
    assert "cannot go from completed to failed" in str(refused.value)
    assert ws.state == "completed"

    with pytest.raises(WsfsClientError) as bad:
        Workspace.create(m.mnt, "no/slash")
    assert bad.value.errno == errno.EINVAL

    with pytest.raises(WsfsClientError, match="not a mounted wsfs"):
        Workspace.create(tmp_path, "j")
    with pytest.raises(WsfsClientError) as missing:
        _ = Workspace(m.mnt, "never").state
    assert missing.value.errno == errno.ENOENT
    assert m.daemon_errors() == []


def test_workspace_records_are_readable(wsfs_mount):
    m = wsfs_mount
    with Workspace.create(m.mnt, "info", quota="1M") as ws:
        info = ws.info()
        assert info["id"] == "info" and info["quota"] == 1 << 20
        assert json.loads((ws.path / ".job").read_text())["state"] == "running"
    assert Mount(m.mnt).status()["jobs"] == {"completed": 1}
