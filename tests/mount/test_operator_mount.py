"""What an operator meets, through real mounts: reload without unmounting, an unmount that
ends the daemon whatever other mount namespaces hold, one log line per transition.  (The units
themselves: tests/core/test_service.py; a bad config that stops for good:
tests/core/test_mount_refusals.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from conftest import MountedWsfs, is_mounted, sh, wsfs_cli

pytestmark = pytest.mark.mount



@pytest.fixture(autouse=True)
def _logging_restored(keep_logging):
    """The CLI's ``main`` reconfigures the root logger: conftest's ``keep_logging`` puts it back."""


wsfs = wsfs_cli


def test_reload_reads_the_config_again_and_refuses_a_bad_one(mount_factory):
    m = mount_factory(config='[templates.a]\nareas = { in = "input", out = "keep" }\n')
    fd = os.open(m.ws.parent / "shared" / "open-file", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        sh("mkdir workspaces/before", cwd=m.mnt)
        config = m.base / "wsfs.toml"
        config.write_text('[templates.b]\nareas = { src = "input", res = "keep" }\nquota = "1M"\n')
        r = wsfs("reload", "--mount", str(m.mnt))
        assert r.returncode == 0, r.stderr
        sh('echo "create new-b template=b" > .wsfs/control', cwd=m.mnt)
        assert sorted(os.listdir(m.ws / "new-b")) == [".job", ".manifest", ".state", "res", "src"]
        assert json.loads((m.ws / "new-b" / ".job").read_text())["quota"] == 1 << 20
        config.write_text("quota = \"lots\"\n")
        r = wsfs("reload", "--mount", str(m.mnt))
        assert r.returncode == 1 and "reload refused" in r.stderr and "quota" in r.stderr
        sh('echo "create still-b template=b" > .wsfs/control', cwd=m.mnt)  # the config in use stayed
        os.write(fd, b"still open, still writable")
        assert is_mounted(m.mnt) and (m.ws / "before").is_dir()
    finally:
        os.close(fd)
    assert (m.mnt / "shared" / "open-file").read_bytes() == b"still open, still writable"
    assert "config reloaded from" in m.log_text() and "reload refused" in m.log_text()


def test_unmount_ends_the_daemon_while_another_mount_namespace_holds_the_mount(mount_factory):
    m = mount_factory()
    pid = m.proc.pid
    fusectl_before = "/sys/fs/fuse/connections" in open("/proc/mounts").read()
    # A process in its own mount namespace, made after the mount: it holds a copy of it.
    holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sleep", "300"])
    try:
        time.sleep(0.3)
        assert holder.poll() is None
        started = time.monotonic()
        r = wsfs("unmount", str(m.mnt))
        assert r.returncode == 0, r.stderr
        assert "another mount namespace still held it" in r.stdout
        m.proc.wait(timeout=30)  # the daemon is gone, not waiting for the other namespace
        assert time.monotonic() - started < 30
        assert not is_mounted(m.mnt)
        assert "wsfs stopped (clean)" in m.log_text()
        # fusectl, if wsfs had to mount it to abort the connection, is unmounted again.
        assert ("/sys/fs/fuse/connections" in open("/proc/mounts").read()) == fusectl_before
    finally:
        holder.kill()
        holder.wait()
    assert pid == m.proc.pid


def test_each_transition_is_one_info_line_in_the_log(mount_factory):
    m = mount_factory()
    sh('mkdir workspaces/logged && echo "failed disk full" > workspaces/logged/.state', cwd=m.mnt)
    sh('echo "resume logged" > .wsfs/control && echo completed > workspaces/logged/.state', cwd=m.mnt)
    lines = [line for line in m.log_text().splitlines() if "INFO wsfs.lifecycle" in line and "job logged:" in line]
    assert [line.split("job logged: ")[1] for line in lines] == [
        "running -> failed (disk full)", "failed -> running (resumed)", "running -> completed"]


def test_mount_makes_its_default_mount_point(tmp_path, monkeypatch):
    """``wsfs mount`` with no mount point makes the default one (``~/wsfs`` for a user) first."""
    from click.testing import CliRunner

    from wsfs.client import cli
    from wsfs.fuse import daemon

    target = tmp_path / "home" / "wsfs"
    calls = []
    monkeypatch.setattr(cli, "default_mountpoint", lambda: str(target))
    monkeypatch.setattr(daemon, "spawn", lambda mountpoint, *args, **kwargs: calls.append(mountpoint))
    result = CliRunner().invoke(cli.main, ["mount", "--data", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    assert target.is_dir() and calls == [str(target)]


def test_the_stopped_mount_is_not_a_workspace_error(mount_factory):
    m: MountedWsfs = mount_factory()
    sh("mkdir workspaces/w", cwd=m.mnt)
    m.kill9()
    try:
        r = wsfs("state", "w", "completed", "--mount", str(m.mnt))
        assert r.returncode == 1 and "is gone" in r.stderr
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(m.mnt)], capture_output=True)
