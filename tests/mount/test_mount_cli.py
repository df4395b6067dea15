"""``wsfs mount`` / ``wsfs unmount`` as a user runs them (docs/spec.md §7, §10, §11).

Background mode is the default: ``wsfs mount`` starts the daemon detached
and returns once the mount answers.  Such a daemon is no fixture's child, so
every test here that starts one tears it down itself in ``finally``
(``force_unmount``: ``fusermount3 -u -z``, then the daemon's pid, read from
``MNT/.wsfs/status``, is waited for and killed if need be).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, assert_refused, is_mounted, log_problems, require_fuse

pytestmark = pytest.mark.mount


def wsfs(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "wsfs", *args], capture_output=True, text=True, env=env,
                          cwd=str(REPO), timeout=90)


def daemon_pid(mnt: Path) -> int | None:
    try:
        return int(json.loads((mnt / ".wsfs" / "status").read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return not alive(pid)


def force_unmount(mnt: Path, pid: int | None = None) -> None:
    """Leave nothing behind: detach the mount, then make sure its daemon is gone."""
    pid = pid or daemon_pid(mnt)
    if is_mounted(mnt):
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
    if pid and not wait_gone(pid, 15):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not wait_gone(pid, 5):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_gone(pid, 5)


@contextlib.contextmanager
def background_mount(mnt: Path, data: Path):
    """``wsfs mount MNT --data DATA`` (background); yields the daemon's pid; always torn down."""
    pid = None
    try:
        result = wsfs("mount", str(mnt), "--data", str(data))
        assert result.returncode == 0, result.stderr
        pid = daemon_pid(mnt)
        assert pid is not None and alive(pid)
        yield pid
    finally:
        force_unmount(mnt, pid)


@pytest.fixture
def place(tmp_path):
    require_fuse()
    (tmp_path / "mnt").mkdir()
    yield tmp_path
    for mnt in tmp_path.glob("*mnt*"):
        if mnt.is_dir() and is_mounted(mnt):  # a test that failed half-way: leave nothing behind
            force_unmount(mnt)


# -- background mount and clean unmount ----------------------------------------------------------------


def test_background_mount_returns_once_the_mount_answers_and_unmount_waits_for_the_daemon(place):
    mnt, data = place / "mnt", place / "data"
    result = wsfs("mount", str(mnt), "--data", str(data))
    pid = daemon_pid(mnt)  # read at once: the mount must answer as soon as `wsfs mount` returned
    try:
        assert result.returncode == 0, result.stderr
        assert str(mnt) in result.stdout
        assert is_mounted(mnt) and pid is not None and alive(pid)
        os.mkdir(mnt / "workspaces" / "J")
        (mnt / "workspaces" / "J" / "output" / "f").write_text("x")
        result = wsfs("unmount", str(mnt))
        assert result.returncode == 0, result.stderr
        assert str(mnt) in result.stdout
        assert not is_mounted(mnt)
        assert not alive(pid)  # unmount returns after the daemon closed its store
        assert os.listdir(mnt) == []
        log = (data / "wsfs.log").read_text()
        assert "stopped (clean)" in log
        assert log_problems(log) == []
    finally:
        force_unmount(mnt, pid)


# -- refusals ------------------------------------------------------------------------------------


def test_refuses_a_mount_point_that_is_already_a_wsfs_mount(mount_factory, place):
    m = mount_factory()
    before = os.stat(m.mnt / ".wsfs" / "status")
    assert_refused(wsfs("mount", str(m.mnt), "--data", str(place / "data2")), str(m.mnt), "already a wsfs mount")
    # The running mount is untouched, and no second daemon serves anything.
    assert os.stat(m.mnt / ".wsfs" / "status").st_ino == before.st_ino
    assert daemon_pid(m.mnt) == m.proc.pid
    assert not (place / "data2" / "store").exists()


def test_refuses_a_data_dir_another_daemon_serves(mount_factory, place):
    m = mount_factory()
    other = place / "other-mnt"
    other.mkdir()
    line = assert_refused(wsfs("mount", str(other), "--data", str(m.data)), str(m.data))
    assert "in use" in line and str(m.proc.pid) in line
    assert not is_mounted(other)
    # The first daemon still serves, its store untouched by the attempt.
    assert daemon_pid(m.mnt) == m.proc.pid
    os.mkdir(m.ws / "still-works")
    assert (m.ws / "still-works" / ".state").read_text() == "running\n"


# -- a killed daemon ---------------------------------------------------------------------------------


def test_mount_over_a_stale_mount_after_kill_9(mount_factory):
    m = mount_factory()
    os.mkdir(m.ws / "J")
    for path, content in ((m.ws / "J" / "output" / "result.bin", b"r" * 100_000),
                          (m.mnt / "shared" / "model.bin", b"m" * 50_000)):
        with open(path, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
    m.kill9()
    assert is_mounted(m.mnt)
    # Whatever the kernel must ask the daemon for fails: ENOTCONN.  (A stat the kernel can still answer
    # from its attribute cache, up to attr_timeout after the last one, succeeds: not asserted here.)
    for call, path in ((os.statvfs, m.mnt), (os.listdir, m.mnt), (os.stat, m.mnt / "never-looked-up"),
                       (os.stat, m.ws / "J" / "output" / "never-looked-up")):
        with pytest.raises(OSError) as info:
            call(path)
        assert (call.__name__, info.value.errno) == (call.__name__, errno.ENOTCONN)
    with background_mount(m.mnt, m.data) as pid:
        assert pid != m.proc.pid
        assert (m.mnt / "shared" / "model.bin").read_bytes() == b"m" * 50_000
        # Running when the daemon died: quarantined (on_crash = "quarantine"), its files kept (docs/spec.md §7).
        assert os.listdir(m.ws) == []
        assert (m.mnt / "quarantine" / "J" / "output" / "result.bin").read_bytes() == b"r" * 100_000
        assert (m.mnt / "quarantine" / "J" / ".state").read_text() == "crashed\n"
        with open("/proc/self/mounts") as f:
            assert len([ln for ln in f if f" {m.mnt} " in ln]) == 1  # the stale one was cleared
        os.mkdir(m.ws / "after")
        assert (m.ws / "after" / ".state").read_text() == "running\n"
    assert not is_mounted(m.mnt)
    assert log_problems((m.data / "wsfs.log").read_text()) == []


# -- persistence ---------------------------------------------------------------------------------------


def snapshot(root: Path) -> dict:
    """Every entry below ``root``: kind, mode, owner, mtime, inode, content or target, user xattrs.

    ``.wsfs`` (live numbers) and the two virtual directories (dated by the mount) are left out.
    """
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root:
            dirnames.remove(".wsfs")
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            if Path(dirpath) == root and name in ("workspaces", "quarantine"):
                continue
            st = os.lstat(path)
            entry = {"mode": st.st_mode, "uid": st.st_uid, "gid": st.st_gid, "mtime_ns": st.st_mtime_ns,
                     "ino": st.st_ino}
            if os.path.islink(path):
                entry["target"] = os.readlink(path)
            else:
                entry["xattrs"] = {a: os.getxattr(path, a) for a in sorted(os.listxattr(path))}
                if path.is_file() and name not in (".job", ".manifest", ".state"):
                    entry["content"] = path.read_bytes()
            if name in (".job", ".manifest", ".state"):
                entry = {"content": path.read_bytes()}
            out[str(path.relative_to(root))] = entry
    return out


def test_everything_persists_across_unmount_and_mount(place):
    mnt, data = place / "mnt", place / "data"
    with background_mount(mnt, data):
        ws = mnt / "workspaces"
        os.mkdir(ws / "J1")
        (mnt / ".wsfs" / "control").write_text("create J2\n")
        (ws / "J1" / "input" / "in.txt").write_text("input\n")
        (ws / "J1" / "output" / "deep" / "er").mkdir(parents=True)
        (ws / "J1" / "output" / "deep" / "er" / "out.bin").write_bytes(os.urandom(70_000))
        os.chmod(ws / "J1" / "output" / "deep" / "er" / "out.bin", 0o640)
        os.utime(ws / "J1" / "output" / "deep" / "er" / "out.bin",
                 ns=(1_111_111_111_111_111_111, 987_654_321_123_456_789))
        os.setxattr(ws / "J1" / "output" / "deep" / "er" / "out.bin", "user.checksum", b"abc123")
        os.setxattr(ws / "J1" / "output" / "deep", "user.kind", b"dir")
        os.chown(ws / "J1" / "temp", 0, 0)
        (ws / "J1" / "temp" / "scratch").write_bytes(b"s")
        os.chown(ws / "J1" / "temp" / "scratch", 4321, 8765)
        os.symlink("../output/deep", ws / "J1" / "temp" / "link")
        os.link(ws / "J1" / "input" / "in.txt", ws / "J1" / "output" / "in-again.txt")
        os.chmod(ws / "J1" / "input", 0o750)
        (ws / "J2" / "output" / "two").write_text("2")
        (mnt / "shared" / "lib").mkdir()
        (mnt / "shared" / "lib" / "model").write_bytes(b"weights")
        os.setxattr(mnt / "shared" / "lib" / "model", "user.v", b"7")
        (ws / "J2" / ".state").write_text("stage converting\n")
        (ws / "J2" / "output" / "done.txt").write_text("done")
        before = snapshot(mnt)
        result = wsfs("unmount", str(mnt))
        assert result.returncode == 0, result.stderr
        assert not is_mounted(mnt) and os.listdir(mnt) == []
    with background_mount(mnt, data):
        after = snapshot(mnt)
        assert sorted(after) == sorted(before)
        for path in before:
            assert after[path] == before[path], path
        assert (mnt / "workspaces" / "J1" / ".state").read_text() == "running\n"
        job2 = json.loads((mnt / "workspaces" / "J2" / ".job").read_text())
        assert (job2["state"], job2["stage"]) == ("running", "converting")
        manifest = [json.loads(ln) for ln in (mnt / "workspaces" / "J1" / ".manifest").read_text().splitlines()]
        assert {e["path"] for e in manifest} == {"input/in.txt", "output/deep/er/out.bin", "output/in-again.txt",
                                                  "temp/scratch"}
        assert {e["path"]: e["mtime_ns"] for e in manifest}["output/deep/er/out.bin"] == 987_654_321_123_456_789
        status = json.loads((mnt / ".wsfs" / "status").read_text())
        assert status["jobs"] == {"running": 2}
        result = wsfs("unmount", str(mnt))
        assert result.returncode == 0, result.stderr
    log = (data / "wsfs.log").read_text()
    assert "did not end cleanly" not in log
    assert log_problems(log) == []


# -- a busy mount ---------------------------------------------------------------------------------------


def test_unmount_of_a_busy_mount_names_it_and_lazy_detaches(place):
    mnt, data = place / "mnt", place / "data"
    holder = None
    with background_mount(mnt, data) as pid:
        os.mkdir(mnt / "workspaces" / "J")
        holder = subprocess.Popen(["sleep", "30"], cwd=mnt / "workspaces" / "J" / "output")
        try:
            line = assert_refused(wsfs("unmount", str(mnt)), str(mnt))
            assert "busy" in line and f"pid {holder.pid}" in line
            assert is_mounted(mnt) and alive(pid)
            assert (mnt / "workspaces" / "J" / ".state").read_text() == "running\n"  # still served
            result = wsfs("unmount", "--lazy", str(mnt))
            assert result.returncode == 0, result.stderr
            assert not is_mounted(mnt)
            assert os.listdir(mnt) == []
        finally:
            holder.kill()
            holder.wait()
        # Free now: the daemon finishes its clean shutdown on its own.
        assert wait_gone(pid, 30)
    assert "stopped (clean)" in (data / "wsfs.log").read_text()
