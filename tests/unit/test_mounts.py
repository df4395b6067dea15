"""``wsfs.client.mounts``: which wsfs mount a command means, read from mountinfo (no mount
needed: the mountinfo is written here, as the kernel writes it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsfs.client import mounts
from wsfs.client.mounts import MountLookupError, find_mount, visible_mounts

LINES = {
    "root": "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw",
    "wsfs": "85 22 0:50 / /mnt/wsfs rw,nosuid,nodev,relatime shared:45 - fuse.wsfs wsfs rw,user_id=0,group_id=0",
    "spaced": r"86 22 0:51 / /home/a\040b/my\011ws rw,relatime - fuse.wsfs wsfs rw,user_id=1000,group_id=1000",
    "other_fuse": "87 22 0:52 / /mnt/sshfs rw - fuse.sshfs host:/ rw",
    "optional_fields": "88 22 0:53 / /srv/ws rw master:3 propagate_from:2 unbindable - fuse.wsfs wsfs rw",
    "again": "89 22 0:50 / /mnt/wsfs rw - fuse.wsfs wsfs rw",
}


def mountinfo(tmp_path: Path, *names: str) -> str:
    path = tmp_path / "mountinfo"
    path.write_text("".join(LINES[n] + "\n" for n in names))
    return str(path)


def test_only_wsfs_mounts_are_seen_each_once_in_mount_order(tmp_path):
    info = mountinfo(tmp_path, "root", "wsfs", "other_fuse", "optional_fields", "again")
    assert visible_mounts(info) == ["/mnt/wsfs", "/srv/ws"]


def test_mount_points_with_spaces_and_tabs_are_unescaped(tmp_path):
    assert visible_mounts(mountinfo(tmp_path, "spaced")) == ["/home/a b/my\tws"]


def test_no_mountinfo_and_a_broken_line_see_nothing(tmp_path):
    assert visible_mounts(str(tmp_path / "missing")) == []
    (tmp_path / "broken").write_text("garbage without the separator\n12 1\n")
    assert visible_mounts(str(tmp_path / "broken")) == []


def test_find_mount_prefers_the_given_then_the_environment_then_the_only_one(tmp_path, monkeypatch):
    monkeypatch.delenv("WSFS_MOUNT", raising=False)
    monkeypatch.setattr(mounts, "visible_mounts", lambda: ["/mnt/wsfs"])
    assert find_mount() == Path("/mnt/wsfs")
    monkeypatch.setenv("WSFS_MOUNT", "/from/env")
    assert find_mount() == Path("/from/env")
    assert find_mount("/given") == Path("/given")


def test_find_mount_asks_which_when_there_are_several_and_defaults_when_none(monkeypatch):
    monkeypatch.delenv("WSFS_MOUNT", raising=False)
    monkeypatch.setattr(mounts, "visible_mounts", lambda: ["/mnt/wsfs", "/srv/ws"])
    with pytest.raises(MountLookupError, match=r"2 wsfs mounts: /mnt/wsfs, /srv/ws; say which"):
        find_mount()
    monkeypatch.setattr(mounts, "visible_mounts", lambda: [])
    assert find_mount() == Path(mounts.default_mountpoint())


def test_defaults_for_root_and_for_a_user(monkeypatch, tmp_path):
    monkeypatch.setattr(mounts.os, "geteuid", lambda: 0)
    assert (mounts.default_data_dir(), mounts.default_mountpoint()) == ("/var/lib/wsfs", "/mnt/wsfs")
    monkeypatch.setattr(mounts.os, "geteuid", lambda: 1000)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert mounts.default_data_dir() == str(tmp_path / "xdg" / "wsfs")
    monkeypatch.delenv("XDG_DATA_HOME")
    assert mounts.default_data_dir() == str(tmp_path / ".local" / "share" / "wsfs")
    assert mounts.default_mountpoint() == str(tmp_path / "wsfs")
