"""The safe walker (tree.py, docs/spec.md §12): no symlink planted in the data dir is ever followed.

A canary directory outside the data dir holds files, a subdir, a symlink and
an xattr.  Symlinks to it are planted in the data dir in place of a job dir,
an area and a nested dir; every ``Tree`` method is then called on paths that
go *through* the planted link and must refuse, leaving the canary byte for
byte, mode for mode, time for time as it was.  The whole matrix runs with
``openat2`` and with the component-by-component fallback walker.  Each
operation is also run once on a real directory of the same shape, so a
refusal is known to come from the link and not from a broken operation.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time

import pytest
from escape_support import make_mirror, snapshot

from wsfs.core.errors import UnsafePathError, WsfsError
from wsfs.core.tree import NAME_MAX, ROOTS, Tree, check_name, split

RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


# Where a link is planted (relative to DATA/jobs): a job, an area, a nested dir.
PLANTS = {"job": "J", "area": "K/output", "nested": "L/output/a/b"}


class Setup:
    def __init__(self, tmp_path, use_openat2: bool, relative: bool):
        self.canary = str(tmp_path / "canary")
        make_mirror(self.canary)
        self.data = str(tmp_path / "data")
        self.tree = Tree(self.data)
        if use_openat2 and not self.tree._has_openat2:
            pytest.skip("the kernel has no openat2")
        self.tree._has_openat2 = use_openat2
        jobs = os.path.join(self.data, "jobs")
        os.makedirs(os.path.join(jobs, "K", "input"))
        os.makedirs(os.path.join(jobs, "L", "output", "a"))
        os.makedirs(os.path.join(jobs, "ok", "output"))
        with open(os.path.join(jobs, "ok", "output", "f"), "wb") as f:
            f.write(b"a job's own file\n")
        make_mirror(os.path.join(jobs, "ok", "output", "real"))
        for plant in PLANTS.values():
            link = os.path.join(jobs, plant)
            target = os.path.relpath(self.canary, os.path.dirname(link)) if relative else self.canary
            os.symlink(target, link)
        self.before = snapshot(self.canary)
        self.outside_before = sorted(os.listdir(tmp_path))

    def assert_canary_unchanged(self, tmp_path) -> None:
        assert snapshot(self.canary) == self.before
        assert sorted(os.listdir(tmp_path)) == self.outside_before


@pytest.fixture(params=["openat2", "walk"])
def walker(request):
    return request.param == "openat2"


@pytest.fixture(params=["absolute", "relative"])
def link_style(request):
    return request.param == "relative"


@pytest.fixture
def setup(tmp_path, walker, link_style):
    """Links planted with an absolute and with a relative target (each would escape if followed)."""
    s = Setup(tmp_path, walker, link_style)
    yield s
    s.tree.close()


@pytest.fixture
def abs_setup(tmp_path, walker):
    s = Setup(tmp_path, walker, relative=False)
    yield s
    s.tree.close()


def _list(gen):
    return list(gen)


# Every Tree method, as a call on a path below P (P = where a link may be planted).
OPS = {
    "lstat": lambda t, p: t.lstat("jobs", f"{p}/victim"),
    "lstat-nested": lambda t, p: t.lstat("jobs", f"{p}/sub/victim"),
    "exists": lambda t, p: t.exists("jobs", f"{p}/victim"),
    "open-read": lambda t, p: os.close(t.open("jobs", f"{p}/victim", os.O_RDONLY)),
    "open-write": lambda t, p: os.close(t.open("jobs", f"{p}/victim", os.O_WRONLY)),
    "open-trunc": lambda t, p: os.close(t.open("jobs", f"{p}/victim", os.O_WRONLY | os.O_TRUNC)),
    "open-append": lambda t, p: os.write(fd := t.open("jobs", f"{p}/victim", os.O_WRONLY | os.O_APPEND), b"x")
    and os.close(fd),
    "open-create": lambda t, p: os.close(t.open("jobs", f"{p}/new", os.O_WRONLY | os.O_CREAT, 0o644)),
    "open-create-excl": lambda t, p: os.close(t.open("jobs", f"{p}/new", os.O_WRONLY | os.O_CREAT | os.O_EXCL)),
    "open-nested-create": lambda t, p: os.close(t.open("jobs", f"{p}/sub/new", os.O_WRONLY | os.O_CREAT)),
    "open-dir": lambda t, p: os.close(t.open("jobs", f"{p}/sub", os.O_RDONLY | os.O_DIRECTORY)),
    "open_dir": lambda t, p: os.close(t.open_dir("jobs", split(f"{p}/sub"))),
    "listdir": lambda t, p: t.listdir("jobs", f"{p}/sub"),
    "scandir": lambda t, p: t.scandir("jobs", f"{p}/sub"),
    "mkdir": lambda t, p: t.mkdir("jobs", f"{p}/newdir"),
    "mkdir-nested": lambda t, p: t.mkdir("jobs", f"{p}/sub/newdir"),
    "rmdir": lambda t, p: t.rmdir("jobs", f"{p}/empty"),
    "unlink": lambda t, p: t.unlink("jobs", f"{p}/victim"),
    "unlink-nested": lambda t, p: t.unlink("jobs", f"{p}/sub/victim"),
    "unlink-symlink": lambda t, p: t.unlink("jobs", f"{p}/lnk"),
    "symlink": lambda t, p: t.symlink("jobs", f"{p}/newlink", "victim"),
    "readlink": lambda t, p: t.readlink("jobs", f"{p}/lnk"),
    "mknod-fifo": lambda t, p: t.mknod("jobs", f"{p}/fifo", stat.S_IFIFO | 0o600),
    "mknod-file": lambda t, p: t.mknod("jobs", f"{p}/reg", stat.S_IFREG | 0o600),
    "link-src": lambda t, p: t.link("jobs", f"{p}/victim", "ok/output/stolen"),
    "link-dst": lambda t, p: t.link("jobs", "ok/output/f", f"{p}/planted"),
    "rename-src": lambda t, p: t.rename("jobs", f"{p}/victim", "jobs", "ok/output/stolen"),
    "rename-src-dir": lambda t, p: t.rename("jobs", f"{p}/sub", "jobs", "ok/output/stolen"),
    "rename-dst": lambda t, p: t.rename("jobs", "ok/output/f", "jobs", f"{p}/planted"),
    "rename-dst-replace": lambda t, p: t.rename("jobs", "ok/output/f", "jobs", f"{p}/victim"),
    "rename-noreplace": lambda t, p: t.rename("jobs", f"{p}/victim", "jobs", "ok/output/stolen", RENAME_NOREPLACE),
    "rename-exchange": lambda t, p: t.rename("jobs", "ok/output/f", "jobs", f"{p}/victim", RENAME_EXCHANGE),
    "rename-to-trash": lambda t, p: t.rename("jobs", f"{p}/victim", "trash", "stolen"),
    "chmod": lambda t, p: t.chmod("jobs", f"{p}/victim", 0o666),
    "chmod-dir": lambda t, p: t.chmod("jobs", f"{p}/sub", 0o777),
    "chown": lambda t, p: t.chown("jobs", f"{p}/victim", 1234, 1234),
    "chown-symlink": lambda t, p: t.chown("jobs", f"{p}/lnk", 1234, 1234),
    "utime-now": lambda t, p: t.utime("jobs", f"{p}/victim", None),
    "utime-ns": lambda t, p: t.utime("jobs", f"{p}/victim", (1, 1)),
    "truncate": lambda t, p: t.truncate("jobs", f"{p}/victim", 0),
    "truncate-grow": lambda t, p: t.truncate("jobs", f"{p}/victim", 1 << 20),
    "getxattr": lambda t, p: t.getxattr("jobs", f"{p}/victim", "user.canary"),
    "setxattr": lambda t, p: t.setxattr("jobs", f"{p}/victim", "user.evil", b"1", 0),
    "listxattr": lambda t, p: t.listxattr("jobs", f"{p}/victim"),
    "removexattr": lambda t, p: t.removexattr("jobs", f"{p}/victim", "user.canary"),
    "walk_files": lambda t, p: _list(t.walk_files("jobs", f"{p}/sub")),
    "move_to_trash": lambda t, p: t.move_to_trash("jobs", f"{p}/victim", "stolen"),
    "move_to_trash-dir": lambda t, p: t.move_to_trash("jobs", f"{p}/sub", "stolen"),
}


@pytest.mark.parametrize("op", sorted(OPS))
def test_each_operation_works_on_a_real_dir(abs_setup, tmp_path, op):
    """The control group: the same call on a real dir of the canary's shape succeeds."""
    setup = abs_setup
    before = snapshot(os.path.join(setup.data, "jobs", "ok", "output", "real"))
    OPS[op](setup.tree, "ok/output/real")
    if op not in ("lstat", "lstat-nested", "exists", "open-read", "open-write", "open-dir", "open_dir", "listdir",
                  "scandir", "readlink", "getxattr", "listxattr", "walk_files", "chown-symlink"):
        # Root may chown a symlink to root; every other operation shows it acted.
        assert snapshot(os.path.join(setup.data, "jobs", "ok", "output", "real")) != before, op
    setup.assert_canary_unchanged(tmp_path)


@pytest.mark.parametrize("plant", sorted(PLANTS))
@pytest.mark.parametrize("op", sorted(OPS))
def test_no_operation_follows_a_planted_link(setup, tmp_path, plant, op):
    with pytest.raises((OSError, WsfsError)) as info:
        OPS[op](setup.tree, PLANTS[plant])
    err = info.value.errno
    assert err in (errno.ELOOP, errno.ENOTDIR, errno.EXDEV, errno.EPERM), (op, err, info.value)
    setup.assert_canary_unchanged(tmp_path)


@pytest.mark.parametrize("plant", sorted(PLANTS))
@pytest.mark.parametrize("rel", ["", "/sub"])
def test_remove_tree_through_a_planted_link_removes_nothing(setup, tmp_path, plant, rel):
    errors = []
    try:
        failures = setup.tree.remove_tree("jobs", PLANTS[plant] + rel, on_error=lambda p, e: errors.append((p, e)))
    except (OSError, WsfsError) as exc:
        assert exc.errno in (errno.ELOOP, errno.ENOTDIR)
    else:
        if rel:
            # The fallback walker reports the path it could not reach rather than raising.
            assert failures == len(errors) >= 1
        else:
            # The link itself is removed (it is the entry at that name); its target is not touched.
            assert not os.path.lexists(os.path.join(setup.data, "jobs", PLANTS[plant]))
    setup.assert_canary_unchanged(tmp_path)


# Calls whose *last* component is the planted link: each refuses or acts on the link itself.
FINAL_OPS = {
    "lstat": lambda t, p: t.lstat("jobs", p),
    "open-read": lambda t, p: os.close(t.open("jobs", p, os.O_RDONLY)),
    "open-dir": lambda t, p: os.close(t.open("jobs", p, os.O_RDONLY | os.O_DIRECTORY)),
    "open-write": lambda t, p: os.close(t.open("jobs", p, os.O_WRONLY | os.O_TRUNC)),
    "open-create": lambda t, p: os.close(t.open("jobs", p, os.O_WRONLY | os.O_CREAT)),
    "listdir": lambda t, p: t.listdir("jobs", p),
    "scandir": lambda t, p: t.scandir("jobs", p),
    "mkdir": lambda t, p: t.mkdir("jobs", p),
    "rmdir": lambda t, p: t.rmdir("jobs", p),
    "chmod": lambda t, p: t.chmod("jobs", p, 0o777),
    "chown": lambda t, p: t.chown("jobs", p, 1234, 1234),
    "utime": lambda t, p: t.utime("jobs", p, (1, 1)),
    "truncate": lambda t, p: t.truncate("jobs", p, 0),
    "getxattr": lambda t, p: t.getxattr("jobs", p, "user.canary"),
    "setxattr": lambda t, p: t.setxattr("jobs", p, "user.evil", b"1", 0),
    "listxattr": lambda t, p: t.listxattr("jobs", p),
    "removexattr": lambda t, p: t.removexattr("jobs", p, "user.canary"),
    "walk_files": lambda t, p: _list(t.walk_files("jobs", p)),
    "readlink": lambda t, p: t.readlink("jobs", p),
    "link": lambda t, p: t.link("jobs", p, "ok/output/hardlink"),
    "rename": lambda t, p: t.rename("jobs", p, "jobs", "ok/output/moved"),
    "move_to_trash": lambda t, p: t.move_to_trash("jobs", p, "moved"),
    "unlink": lambda t, p: t.unlink("jobs", p),
}
MUST_REFUSE = {"open-read", "open-dir", "open-write", "open-create", "listdir", "scandir", "mkdir", "rmdir", "chmod",
               "truncate", "getxattr", "setxattr", "removexattr", "walk_files"}


@pytest.mark.parametrize("plant", sorted(PLANTS))
@pytest.mark.parametrize("op", sorted(FINAL_OPS))
def test_a_planted_link_as_the_last_component(abs_setup, tmp_path, plant, op):
    setup = abs_setup
    if op in MUST_REFUSE:
        with pytest.raises((OSError, WsfsError)):
            FINAL_OPS[op](setup.tree, PLANTS[plant])
    else:
        try:
            result = FINAL_OPS[op](setup.tree, PLANTS[plant])
        except (OSError, WsfsError):
            pass
        else:
            if op == "listxattr":  # the link's own attributes (none), never the canary's
                assert "user.canary" not in result
    setup.assert_canary_unchanged(tmp_path)


def test_walk_files_of_a_tree_holding_links_lists_none_of_the_canary(setup, tmp_path):
    for job in ("K", "L"):
        files = dict(setup.tree.walk_files("jobs", job))
        assert files == {}, files
    assert "output/f" in dict(setup.tree.walk_files("jobs", "ok"))
    assert "output/real/sub/victim" in dict(setup.tree.walk_files("jobs", "ok"))
    entries = {name: kind for name, _ino, kind in setup.tree.scandir("jobs", "K")}
    assert entries == {"input": stat.S_IFDIR, "output": stat.S_IFLNK}
    setup.assert_canary_unchanged(tmp_path)


def test_remove_tree_removes_links_not_their_targets(setup, tmp_path):
    jobs = os.path.join(setup.data, "jobs")
    os.symlink(setup.canary, os.path.join(jobs, "ok", "output", "to-canary-dir"))
    os.symlink(os.path.join(setup.canary, "victim"), os.path.join(jobs, "ok", "output", "real", "sub", "to-file"))
    errors = []
    for job in ("ok", "K", "L"):
        assert setup.tree.remove_tree("jobs", job, on_error=lambda p, e: errors.append((p, e))) == 0
        assert not os.path.lexists(os.path.join(jobs, job))
    assert errors == []
    setup.assert_canary_unchanged(tmp_path)


def test_a_link_swapped_in_during_use_is_never_followed(setup, tmp_path):
    """A thread keeps swapping a real dir and a link to the canary (rename is atomic) under the walker."""
    jobs = os.path.join(setup.data, "jobs")
    os.makedirs(os.path.join(jobs, "R", "output", "a"))
    make_mirror(os.path.join(jobs, "R", "output", "a", "d"))
    os.symlink(setup.canary, os.path.join(jobs, "R", "output", "link"))
    stop = threading.Event()

    def swapper():
        a, link = os.path.join(jobs, "R", "output", "a"), os.path.join(jobs, "R", "output", "link")
        spare = os.path.join(jobs, "R", "output", "spare")
        while not stop.is_set():
            os.rename(a, spare)
            os.rename(link, a)        # now R/output/a is the link
            os.rename(a, link)
            os.rename(spare, a)       # and a real dir again

    thread = threading.Thread(target=swapper, daemon=True)
    thread.start()
    outcomes = {"done": 0, "refused": 0}
    deadline = time.monotonic() + 5.0
    try:
        while time.monotonic() < deadline and min(outcomes.values()) < 20 or sum(outcomes.values()) < 2000:
            for op in ("open-create", "unlink", "chmod", "truncate", "setxattr", "mkdir", "utime-ns", "listdir",
                       "rename-dst", "symlink"):
                try:
                    OPS[op](setup.tree, "R/output/a/d")
                    outcomes["done"] += 1
                except (OSError, WsfsError):
                    outcomes["refused"] += 1
            if not os.path.exists(os.path.join(jobs, "ok", "output", "f")):
                with open(os.path.join(jobs, "ok", "output", "f"), "wb") as f:
                    f.write(b"again")
    finally:
        stop.set()
        thread.join()
    assert min(outcomes.values()) > 0, outcomes   # the race was really run both ways
    setup.assert_canary_unchanged(tmp_path)


def test_a_root_that_is_a_symlink_is_refused(tmp_path):
    canary = tmp_path / "canary"
    canary.mkdir()
    data = tmp_path / "data"
    data.mkdir()
    os.symlink(canary, data / "jobs")
    with pytest.raises(OSError):
        Tree(str(data))
    assert os.listdir(canary) == []


# -- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "/", "a\0b", "\0"])
def test_check_name_refuses(name):
    with pytest.raises(UnsafePathError) as info:
        check_name(name)
    assert info.value.errno == errno.EINVAL


@pytest.mark.parametrize("name", ["x" * (NAME_MAX + 1), "\u00e9" * 128, "x" * 1024])
def test_check_name_refuses_long_names_as_the_backing_fs_would(name):
    with pytest.raises(UnsafePathError) as info:
        check_name(name)
    assert info.value.errno == errno.ENAMETOOLONG


@pytest.mark.parametrize("name", ["a", "x" * NAME_MAX, "\u00e9" * 127, ".hidden", "...", "a b", "-", "\udcff"])
def test_check_name_accepts(name):
    assert check_name(name) == name


@pytest.mark.parametrize("rel", ["J/../x", "../x", "./x", "a//b", "a/", "/a", "a/./b", "a/\0", "a/" + "x" * 256])
@pytest.mark.parametrize("op", ["lstat", "open-create", "mkdir", "unlink", "symlink", "chmod", "listdir",
                                "rename-src", "rename-dst", "link-dst", "setxattr", "walk_files"])
def test_bad_names_never_reach_the_backing_store(tmp_path, rel, op):
    tree = Tree(str(tmp_path / "data"))
    try:
        os.makedirs(os.path.join(tree.data_dir, "jobs", "ok", "output"))
        open(os.path.join(tree.data_dir, "jobs", "ok", "output", "f"), "w").close()
        before = sorted(os.walk(tree.data_dir))
        call = {
            "lstat": lambda: tree.lstat("jobs", rel),
            "open-create": lambda: tree.open("jobs", rel, os.O_WRONLY | os.O_CREAT),
            "mkdir": lambda: tree.mkdir("jobs", rel),
            "unlink": lambda: tree.unlink("jobs", rel),
            "symlink": lambda: tree.symlink("jobs", rel, "t"),
            "chmod": lambda: tree.chmod("jobs", rel, 0o777),
            "listdir": lambda: tree.listdir("jobs", rel),
            "rename-src": lambda: tree.rename("jobs", rel, "jobs", "ok/output/g"),
            "rename-dst": lambda: tree.rename("jobs", "ok/output/f", "jobs", rel),
            "link-dst": lambda: tree.link("jobs", "ok/output/f", rel),
            "setxattr": lambda: tree.setxattr("jobs", rel, "user.x", b"1", 0),
            "walk_files": lambda: list(tree.walk_files("jobs", rel)),
        }[op]
        with pytest.raises(UnsafePathError) as info:
            call()
        assert info.value.errno == (errno.ENAMETOOLONG if "x" * 256 in rel else errno.EINVAL)
        assert sorted(os.walk(tree.data_dir)) == before
    finally:
        tree.close()


def test_split():
    assert split("") == []
    assert split("a/b/c") == ["a", "b", "c"]
    with pytest.raises(UnsafePathError):
        split("a/../b")


# -- symlinks, devices and the roots ---------------------------------------------------------


@pytest.fixture
def tree(tmp_path, walker):
    t = Tree(str(tmp_path / "data"))
    if walker and not t._has_openat2:
        pytest.skip("the kernel has no openat2")
    t._has_openat2 = walker
    t.mkdir("jobs", "J")
    t.mkdir("jobs", "J/output")
    yield t
    t.close()


def test_chmod_on_a_final_symlink_refuses_and_leaves_the_target(tree, tmp_path):
    target = tmp_path / "outside"
    target.write_bytes(b"x")
    os.chmod(target, 0o600)
    tree.symlink("jobs", "J/output/lnk", str(target))
    tree.symlink("jobs", "J/output/inner", "f")
    os.close(tree.open("jobs", "J/output/f", os.O_WRONLY | os.O_CREAT, 0o600))
    for link in ("J/output/lnk", "J/output/inner"):
        with pytest.raises(OSError) as info:
            tree.chmod("jobs", link, 0o777)
        assert info.value.errno == errno.EOPNOTSUPP
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert stat.S_IMODE(tree.lstat("jobs", "J/output/f").st_mode) == 0o600
    tree.chmod("jobs", "J/output/f", 0o644)   # and a real file does change
    assert stat.S_IMODE(tree.lstat("jobs", "J/output/f").st_mode) == 0o644


def test_chmod_of_a_root_is_refused(tree):
    with pytest.raises(OSError) as info:
        tree.chmod("jobs", "", 0o777)
    assert info.value.errno == errno.EPERM


@pytest.mark.parametrize("kind", [stat.S_IFCHR, stat.S_IFBLK])
def test_mknod_makes_devices_as_the_disk_does(tree, kind):
    """The kernel lets only a caller with CAP_MKNOD ask (or anyone for the whiteout c 0 0)."""
    tree.mknod("jobs", "J/output/dev", kind | 0o600, os.makedev(1, 3))
    st = tree.lstat("jobs", "J/output/dev")
    assert (stat.S_IFMT(st.st_mode), os.major(st.st_rdev), os.minor(st.st_rdev)) == (kind, 1, 3)


@pytest.mark.parametrize("kind", [stat.S_IFIFO, stat.S_IFREG, stat.S_IFSOCK, 0])
def test_mknod_makes_fifos_sockets_and_files(tree, kind):
    tree.mknod("jobs", "J/output/node", kind | 0o600)
    mode = tree.lstat("jobs", "J/output/node").st_mode
    assert stat.S_IFMT(mode) == (kind or stat.S_IFREG)


def test_xattrs_of_a_symlink_are_its_own_as_linux_answers(tree):
    """Read and listed on the link itself (ENODATA, none); setting or removing user.* is EPERM."""
    tree.symlink("jobs", "J/output/lnk", "/etc/passwd")
    assert tree.listxattr("jobs", "J/output/lnk") == []
    for call, err in ((lambda: tree.getxattr("jobs", "J/output/lnk", "user.x"), errno.ENODATA),
                      (lambda: tree.setxattr("jobs", "J/output/lnk", "user.x", b"1", 0), errno.EPERM),
                      (lambda: tree.removexattr("jobs", "J/output/lnk", "user.x"), errno.EPERM)):
        with pytest.raises(OSError) as info:
            call()
        assert info.value.errno == err


def test_roots_exist_with_their_modes(tree):
    for root in ROOTS:
        st = tree.lstat(root, "")
        assert stat.S_ISDIR(st.st_mode)
    assert stat.S_IMODE(tree.lstat("shared", "").st_mode) == 0o1777
    assert stat.S_IMODE(tree.lstat("jobs", "").st_mode) == 0o700
    assert tree.listdir("jobs", "") == ["J"]


def test_move_to_trash_and_remove_tree(tree):
    tree.mkdir("jobs", "J/output/d")
    fd = tree.open("jobs", "J/output/d/f", os.O_WRONLY | os.O_CREAT)
    os.write(fd, b"data")
    os.close(fd)
    name = tree.move_to_trash("jobs", "J", "J.archived")
    assert name.startswith("J.archived.")
    assert not tree.exists("jobs", "J")
    assert tree.listdir("trash", "") == [name]
    assert dict(tree.walk_files("trash", name))["output/d/f"].st_size == 4
    assert tree.move_to_trash("jobs", "J", "again") is None
    assert tree.remove_tree("trash", name) == 0
    assert tree.listdir("trash", "") == []
    assert tree.remove_tree("trash", "absent") == 0


def test_remove_tree_reports_what_it_cannot_remove(tree, monkeypatch):
    tree.mkdir("jobs", "J/output/d")
    os.close(tree.open("jobs", "J/output/d/f", os.O_WRONLY | os.O_CREAT))
    real_unlink = os.unlink

    def failing_unlink(name, *args, **kwargs):
        if name == "f":
            raise PermissionError(errno.EACCES, "no")
        return real_unlink(name, *args, **kwargs)
    monkeypatch.setattr(os, "unlink", failing_unlink)
    errors = []
    failures = tree.remove_tree("jobs", "J", on_error=lambda p, e: errors.append(p))
    monkeypatch.undo()
    assert failures >= 1 and "J/output/d/f" in errors
    assert tree.exists("jobs", "J/output/d/f")


def test_walk_files_is_sorted_and_lists_regular_files_only(tree):
    for rel in ("J/output/b", "J/output/a/z", "J/output/a/y", "J/input/x"):
        parent = rel.rsplit("/", 1)[0]
        if not tree.exists("jobs", parent):
            tree.mkdir("jobs", parent)
        os.close(tree.open("jobs", rel, os.O_WRONLY | os.O_CREAT))
    tree.symlink("jobs", "J/output/lnk", "b")
    tree.mknod("jobs", "J/output/fifo", stat.S_IFIFO | 0o600)
    assert [p for p, _st in tree.walk_files("jobs", "J")] == ["input/x", "output/a/y", "output/a/z", "output/b"]
    assert list(tree.walk_files("jobs", "absent")) == []
