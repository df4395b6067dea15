"""``tree.walk``, the one walk of a tree in wsfs, and ``tree.remove_contents`` built on it
(docs/architecture.md): order, fds, symlinks never followed, names skipped, entries that
vanish mid-walk, directories that cannot be opened, and removal that reports what stays."""

from __future__ import annotations

import errno
import os

import pytest

from wsfs.core import tree as tree_module
from wsfs.core.tree import ENTER, ENTRY, LEAVE, remove_contents, walk


def make(base) -> None:
    for d in ("a", "a/b", "c"):
        os.mkdir(base / d)
    for f in ("a/b/f", "a/g", "z"):
        (base / f).write_bytes(f.encode())
    os.symlink("a", base / "link-to-dir")
    os.mkfifo(base / "a/pipe")


def steps(base, **kw) -> list[tuple[str, str]]:
    fd = os.open(base, os.O_PATH | os.O_DIRECTORY)
    try:
        return [(s.kind, s.path) for s in walk(fd, **kw)]
    finally:
        os.close(fd)


def test_directories_are_entered_before_and_left_after_what_they_hold_by_name(tmp_path):
    make(tmp_path)
    assert steps(tmp_path) == [
        (ENTER, "a"), (ENTER, "a/b"), (ENTRY, "a/b/f"), (LEAVE, "a/b"), (ENTRY, "a/g"), (ENTRY, "a/pipe"),
        (LEAVE, "a"), (ENTER, "c"), (LEAVE, "c"), (ENTRY, "link-to-dir"), (ENTRY, "z")]


def test_a_symlink_to_a_directory_is_an_entry_never_followed(tmp_path):
    make(tmp_path)
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        link = next(s for s in walk(fd) if s.path == "link-to-dir")
        assert os.readlink(link.name, dir_fd=link.dir_fd) == "a" and link.fd == -1
    finally:
        os.close(fd)


def test_the_fds_name_the_entry_while_its_step_is_looked_at(tmp_path):
    make(tmp_path)
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        for step in walk(fd, "top/"):
            assert step.path.startswith("top/")
            assert os.stat(step.name, dir_fd=step.dir_fd, follow_symlinks=False).st_ino == step.st.st_ino
            if step.kind != ENTRY:
                assert os.fstat(step.fd).st_ino == step.st.st_ino
    finally:
        os.close(fd)


def test_skipped_names_leave_out_what_they_hold(tmp_path):
    make(tmp_path)
    assert [p for _k, p in steps(tmp_path, skip=lambda name: name in ("a", "z"))] == ["c", "c", "link-to-dir"]


def test_an_entry_gone_between_the_listing_and_its_stat_is_passed_over(tmp_path, monkeypatch):
    make(tmp_path)
    real = tree_module.names_in
    monkeypatch.setattr(tree_module, "names_in", lambda fd: real(fd) + ["vanished"])
    assert "vanished" not in [p.rsplit("/", 1)[-1] for _k, p in steps(tmp_path)]


def test_a_directory_that_cannot_be_opened_raises_or_is_reported(tmp_path, monkeypatch):
    make(tmp_path)
    real_open = os.open

    def refusing(path, flags, *args, **kw):
        if path == "b":
            raise PermissionError(errno.EACCES, "refused", path)
        return real_open(path, flags, *args, **kw)
    monkeypatch.setattr(os, "open", refusing)
    with pytest.raises(PermissionError):
        steps(tmp_path)
    reported = []
    got = steps(tmp_path, on_error=lambda path, exc: reported.append((path, exc.errno)))
    assert reported == [("a/b", errno.EACCES)] and not any(p.startswith("a/b") for _k, p in got)


def test_remove_contents_removes_everything_and_nothing_outside(tmp_path):
    target, outside = tmp_path / "t", tmp_path / "outside"
    target.mkdir()
    outside.mkdir()
    (outside / "keep").write_bytes(b"keep")
    make(target)
    os.symlink(str(outside), target / "c" / "escape")
    fd = os.open(target, os.O_PATH | os.O_DIRECTORY)
    try:
        assert remove_contents(fd) == 0
    finally:
        os.close(fd)
    assert os.listdir(target) == [] and (outside / "keep").read_bytes() == b"keep"


def test_remove_contents_reports_what_it_could_not_remove_and_goes_on(tmp_path, monkeypatch):
    make(tmp_path)
    real_unlink = os.unlink

    def refusing(name, *args, **kw):
        if name == "f":
            raise PermissionError(errno.EPERM, "refused", name)
        return real_unlink(name, *args, **kw)
    monkeypatch.setattr(os, "unlink", refusing)
    reported = []
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        failures = remove_contents(fd, "trash/", lambda path, exc: reported.append((path, exc.errno)))
    finally:
        os.close(fd)
    # f stays, so a/b and a cannot go either; everything else went
    assert failures == 3
    assert reported == [("trash/a/b/f", errno.EPERM), ("trash/a/b", errno.ENOTEMPTY), ("trash/a", errno.ENOTEMPTY)]
    assert sorted(os.listdir(tmp_path)) == ["a"] and os.listdir(tmp_path / "a") == ["b"]
