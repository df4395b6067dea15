"""Files frozen at a job's seal (docs/spec.md §8a): a file still open for writing through
kernel passthrough gets FS_IMMUTABLE_FL until its last close.  What the daemon that froze them
cannot do after a crash is done by the next one (``Recovery.thaw_frozen``) and by the trash
(``tree.remove_contents``).  Needs root and a data dir that takes the flag (ext4 here)."""

from __future__ import annotations

import os

import pytest
from conftest import immutable

from wsfs.core import syscalls
from wsfs.core.model import JobState
from wsfs.core.recovery import FROZEN_META
from wsfs.core.tree import remove_contents


@pytest.fixture
def freezing(core):
    if not core.tree.can_freeze():
        pytest.skip("this data dir cannot take FS_IMMUTABLE_FL (not root, or its filesystem lacks it)")
    return core


def freeze(path) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        syscalls.set_immutable(fd, True)
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)


def test_an_immutable_file_refuses_writes_through_a_descriptor_opened_before(freezing, tmp_path):
    path = tmp_path / "data" / "jobs" / "f"
    path.write_bytes(b"x")
    writer = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        freeze(path)
        with pytest.raises(PermissionError):
            os.write(writer, b"late")
        assert immutable(path)
        fd = os.open(path, os.O_RDONLY)
        assert syscalls.set_immutable(fd, False) is True
        os.close(fd)
        os.write(writer, b"y")
    finally:
        os.close(writer)
    assert path.read_bytes() == b"xy"


def test_the_next_daemon_thaws_what_the_store_lists_wherever_the_job_is_now(freezing, tmp_path):
    core = freezing
    data = tmp_path / "data"
    core.create_job("a", 0, 0)
    core.create_job("b", 0, 0)
    (data / "jobs" / "a" / "output" / "log").write_text("a\n")
    (data / "jobs" / "b" / "output" / "log").write_text("b\n")
    (data / "jobs" / "b" / "output" / "other").write_text("not listed\n")
    listed = [["a", "output/log", freeze(data / "jobs" / "a" / "output" / "log")],
              ["b", "output/log", freeze(data / "jobs" / "b" / "output" / "log")],
              ["gone", "output/log", 1]]  # a job the store no longer has: passed over
    freeze(data / "jobs" / "b" / "output" / "other")
    with core.store.write() as w:
        w.put_meta(FROZEN_META, listed)
    core.transition("b", JobState.CRASHED, "test")  # its tree moves to quarantine/
    assert immutable(data / "quarantine" / "b" / "output" / "log")

    assert core.recovery.thaw_frozen() == 3
    assert not immutable(data / "jobs" / "a" / "output" / "log")
    assert not immutable(data / "quarantine" / "b" / "output" / "log")
    assert immutable(data / "quarantine" / "b" / "output" / "other")  # wsfs never listed it: left alone
    with core.store.read() as r:
        assert r.meta(FROZEN_META) == []
    assert core.recovery.thaw_frozen() == 0
    fd = os.open(data / "quarantine" / "b" / "output" / "other", os.O_RDONLY)
    syscalls.set_immutable(fd, False)
    os.close(fd)


def test_the_trash_removes_a_file_left_immutable(freezing, tmp_path):
    trash = tmp_path / "data" / "trash" / "j.archived"
    (trash / "output").mkdir(parents=True)
    (trash / "output" / "log").write_text("x\n")
    freeze(trash / "output" / "log")
    fd = os.open(trash, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert remove_contents(fd) == 0
    finally:
        os.close(fd)
    assert os.listdir(trash) == []
