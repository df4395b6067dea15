"""POSIX parity with the backing disk through a real mount, where wsfs used to differ.

Each test runs its scenario in a job's area, in ``shared/`` and in a plain directory of the
disk (``on_all``) and wants the same answer from all three: modes under ``umask 0``, hard links
of FIFOs and sockets, paths past PATH_MAX, device nodes, extended attributes of symlinks.
The daemon runs with umask 022, as the shipped unit does.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import sh

pytestmark = pytest.mark.mount


@pytest.fixture
def places(mount_factory, tmp_path):
    old = os.umask(0o022)
    try:
        m = mount_factory()
    finally:
        os.umask(old)
    sh("mkdir workspaces/par", cwd=m.mnt)
    plain = tmp_path / "plain"
    plain.mkdir()
    shared = m.mnt / "shared" / "par"
    shared.mkdir()
    return {"job": m.ws / "par" / "temp", "shared": shared, "disk": plain}


def on_all(places, scenario):
    results = {name: scenario(path) for name, path in places.items()}
    assert results["job"] == results["disk"], results
    assert results["shared"] == results["disk"], results
    return results["disk"]


def test_modes_are_exactly_what_the_caller_asked_for_under_umask_0(places):
    def scenario(d: Path):
        sh("umask 0 && touch f && mkdir dd && mkfifo p && (umask 077; touch private)", cwd=d)
        sock = socket.socket(socket.AF_UNIX)
        old = os.umask(0)
        try:
            sock.bind(str(d / "s"))
        finally:
            os.umask(old)
            sock.close()
        fd = os.open(d / "o", os.O_CREAT | os.O_WRONLY, 0o666)
        os.close(fd)
        return {n: oct(stat.S_IMODE(os.lstat(d / n).st_mode)) for n in ("f", "dd", "p", "private", "s")}
    old = os.umask(0)
    try:
        assert on_all(places, scenario) == {"f": "0o666", "dd": "0o777", "p": "0o666", "private": "0o600",
                                            "s": "0o777"}
    finally:
        os.umask(old)


@pytest.mark.parametrize("kind", ["fifo", "socket"])
def test_hard_links_of_fifos_and_sockets_stay_coherent_across_names(places, kind):
    def scenario(d: Path):
        if kind == "fifo":
            os.mkfifo(d / "a", 0o644)
        else:
            with socket.socket(socket.AF_UNIX) as s:
                s.bind(str(d / "a"))
            os.chmod(d / "a", 0o644)
        os.link(d / "a", d / "b")
        before = os.stat(d / "b")  # the kernel caches b's attributes now
        os.chmod(d / "a", 0o600)
        os.chown(d / "a", 65534, 65534)
        after = os.stat(d / "b")
        os.unlink(d / "a")
        last = os.stat(d / "b")
        return (before.st_nlink, oct(stat.S_IMODE(after.st_mode)), after.st_uid, after.st_ctime_ns > 0,
                after.st_ctime_ns >= before.st_ctime_ns, last.st_nlink)
    assert on_all(places, scenario) == (2, "0o600", 65534, True, True, 1)


def test_paths_past_path_max_at_any_depth(places):
    """21 directories of 200 bytes: 4,200 bytes of path, made and used relative to a dir fd."""
    def scenario(d: Path):
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i in range(21):
                name = f"{i:03d}" + "x" * 197
                os.mkdir(name, dir_fd=fd)
                nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                os.close(fd)
                fd = nxt
            f = os.open("f" * 255, os.O_CREAT | os.O_RDWR, 0o644, dir_fd=fd)
            os.write(f, b"deep")
            os.close(f)
            os.rename("f" * 255, "g" * 255, src_dir_fd=fd, dst_dir_fd=fd)
            f = os.open("g" * 255, os.O_RDONLY, dir_fd=fd)
            data = os.read(f, 10)
            os.close(f)
            return data, os.listdir(fd), os.fpathconf(fd, "PC_NAME_MAX")
        finally:
            os.close(fd)
    assert on_all(places, scenario) == (b"deep", ["g" * 255], 255)


def test_a_deep_file_is_in_the_receipt(places):
    job = places["job"].parent
    fd = os.open(job / "output", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(21):
            os.mkdir("d" * 200, dir_fd=fd)
            nxt = os.open("d" * 200, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        f = os.open("result", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd)
        os.write(f, b"found")
        os.close(f)
    finally:
        os.close(fd)
    (job / ".state").write_text("completed\n")
    import json

    outputs = json.loads((job / "receipt.json").read_text())["outputs"]
    assert [o["path"] for o in outputs] == ["output/" + "/".join(["d" * 200] * 21) + "/result"]
    assert outputs[0]["size"] == 5


def test_device_nodes_are_made_as_on_the_disk_and_are_inert_through_the_mount(places):
    def scenario(d: Path):
        os.mknod(d / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.mknod(d / "whiteout", stat.S_IFCHR | 0o600, os.makedev(0, 0))
        os.mknod(d / "blk", stat.S_IFBLK | 0o600, os.makedev(7, 200))
        return [(stat.S_IFMT(st.st_mode), oct(stat.S_IMODE(st.st_mode)), os.major(st.st_rdev), os.minor(st.st_rdev))
                for st in (os.lstat(d / n) for n in ("null", "whiteout", "blk"))]
    old = os.umask(0)
    try:
        assert on_all(places, scenario) == [(stat.S_IFCHR, "0o666", 1, 3), (stat.S_IFCHR, "0o600", 0, 0),
                                            (stat.S_IFBLK, "0o600", 7, 200)]
    finally:
        os.umask(old)
    with pytest.raises(PermissionError):  # the mount is nodev
        open(places["job"] / "null", "rb")


def test_extended_attributes_of_symlinks_answer_as_linux_does(places):
    def scenario(d: Path):
        (d / "target").write_bytes(b"t")
        os.setxattr(d / "target", "user.k", b"v")
        os.symlink("target", d / "link")
        listed = os.listxattr(d / "link", follow_symlinks=False)
        try:
            os.getxattr(d / "link", "user.k", follow_symlinks=False)
            got = "found"
        except OSError as exc:
            got = errno.errorcode[exc.errno]
        try:
            os.setxattr(d / "link", "user.k", b"v", follow_symlinks=False)
            put = "set"
        except OSError as exc:
            put = errno.errorcode[exc.errno]
        followed = os.getxattr(d / "link", "user.k")
        ls = subprocess.run(["ls", "-l", str(d)], capture_output=True, text=True)
        getfattr = subprocess.run(["getfattr", "-h", "-d", str(d / "link")], capture_output=True, text=True)
        return listed, got, put, followed, ls.returncode, ls.stderr, getfattr.returncode
    assert on_all(places, scenario) == ([], "ENODATA", "EPERM", b"v", 0, "", 0)
