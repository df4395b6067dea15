"""``wsfs mount`` and ``wsfs unmount`` refusing what they cannot use (docs/spec.md §10, §11):
each refusal is exit code 1 and one line on stderr naming the thing, before anything is
mounted, so no FUSE is needed.  Mounting and unmounting for real: ``mount/test_mount_cli.py``."""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import assert_refused, is_mounted, wsfs_cli


def wsfs(*args: str) -> subprocess.CompletedProcess:
    return wsfs_cli(*args, timeout=90)


@pytest.fixture
def place(tmp_path):
    """A scratch dir with an empty ``mnt/``; should a refusal regress into a mount, it is undone."""
    (tmp_path / "mnt").mkdir()
    yield tmp_path
    for mnt in tmp_path.glob("*mnt*"):
        if mnt.is_dir() and is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)


def test_unmount_of_something_that_is_not_a_wsfs_mount(place):
    assert_refused(wsfs("unmount", str(place / "mnt")), str(place / "mnt"))


def test_refuses_a_missing_mount_point(place):
    missing = place / "nope"
    assert_refused(wsfs("mount", str(missing), "--data", str(place / "data")), str(missing), "does not exist")
    assert not missing.exists()


def test_refuses_a_mount_point_that_is_a_file(place):
    target = place / "file"
    target.write_text("x")
    assert_refused(wsfs("mount", str(target), "--data", str(place / "data")), str(target), "not a directory")
    assert target.read_text() == "x"


def test_refuses_a_mount_point_that_is_not_empty(place):
    (place / "mnt" / "leftover").write_text("x")
    assert_refused(wsfs("mount", str(place / "mnt"), "--data", str(place / "data")), str(place / "mnt"),
                   "not empty")
    assert not is_mounted(place / "mnt")


def test_refuses_a_data_dir_below_a_file(place):
    blocker = place / "file"
    blocker.write_text("x")
    data = blocker / "sub"
    assert_refused(wsfs("mount", str(place / "mnt"), "--data", str(data)), str(data))
    assert not is_mounted(place / "mnt")
    assert blocker.read_text() == "x"


def test_refuses_a_data_dir_that_is_a_file(place):
    data = place / "file"
    data.write_text("x")
    result = wsfs("mount", str(place / "mnt"), "--data", str(data))
    assert result.returncode == 2 and "is a file" in result.stderr  # click's usage check, before wsfs's own
    assert not is_mounted(place / "mnt")
    assert data.read_text() == "x"


def test_refuses_a_data_dir_on_a_read_only_filesystem(place):
    src, ro = place / "src", place / "ro"
    src.mkdir()
    ro.mkdir()
    bind = subprocess.run(["mount", "--bind", str(src), str(ro)], capture_output=True, text=True)
    if bind.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {bind.stderr.strip()}")
    try:
        remount = subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], capture_output=True, text=True)
        assert remount.returncode == 0, remount.stderr
        for data in (ro, ro / "new"):
            assert_refused(wsfs("mount", str(place / "mnt"), "--data", str(data)), str(data))
            assert not is_mounted(place / "mnt")
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)
    assert os.listdir(src) == []


RESTART_PREVENT_EXIT_STATUS = 78  # systemd/wsfs.service


@pytest.mark.parametrize("config", ["bad_key = 1\n", None])
def test_a_bad_or_missing_config_exits_with_the_status_systemd_does_not_restart(tmp_path, config):
    (tmp_path / "mnt").mkdir()
    path = tmp_path / "wsfs.toml"
    if config is not None:
        path.write_text(config)
    r = wsfs("mount", str(tmp_path / "mnt"), "--data", str(tmp_path / "data"), "--config", str(path), "--foreground")
    assert r.returncode == RESTART_PREVENT_EXIT_STATUS
    assert "bad config, not mounted" in r.stderr and str(path) in r.stderr
    assert ("bad_key" in r.stderr) if config else ("no such config file" in r.stderr)
    assert not is_mounted(tmp_path / "mnt")
