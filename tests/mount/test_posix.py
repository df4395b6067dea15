"""POSIX behaviour through a real mount, inside a job's areas and inside shared/ (docs/spec.md §3, §12).

A program must not notice that it writes to wsfs: each operation runs on the
mount and, where the outcome can be compared, on a plain directory of the
backing filesystem, and both must give the same result or the same errno.

One mount serves the whole module (a mount costs a second to stop); every
test works in its own job or shared/ directory, and after each test the
daemon's log must hold no new error or traceback.
"""

from __future__ import annotations

import calendar
import errno
import hashlib
import itertools
import mmap
import os
import stat
import threading
from pathlib import Path

import pytest
from conftest import MountedWsfs, errno_of, require_fuse, sh

pytestmark = pytest.mark.mount

_names = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}{next(_names)}"




@pytest.fixture(scope="module")
def mounted(tmp_path_factory):
    require_fuse()
    m = MountedWsfs(tmp_path_factory.mktemp("posix"))
    m.start()
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture(autouse=True)
def no_new_daemon_errors(mounted):
    before = len(mounted.daemon_errors())
    yield
    new = mounted.daemon_errors()[before:]
    assert new == [], "daemon logged errors:\n" + mounted.log_text()[-5000:]


@pytest.fixture
def job(mounted) -> Path:
    """A fresh running job; its root in the mount."""
    root = mounted.ws / unique("job")
    os.mkdir(root)
    return root


@pytest.fixture(params=["job-area", "shared"])
def where(request, mounted, tmp_path):
    """(a directory in the mount, a plain directory on the backing filesystem to compare with)."""
    if request.param == "job-area":
        root = mounted.ws / unique("job")
        os.mkdir(root)
        here = root / "output"
    else:
        here = mounted.mnt / "shared" / unique("d")
        os.mkdir(here)
    plain = tmp_path / "plain"
    plain.mkdir()
    return here, plain


def outcome(fn, *args, **kwargs):
    """``("ok", value)`` or ``("err", errno name)``: comparable across filesystems."""
    try:
        result = fn(*args, **kwargs)
    except OSError as exc:
        return ("err", errno.errorcode.get(exc.errno, exc.errno))
    if fn is os.open:
        os.close(result)  # an fd left open would keep the mount busy
        return ("ok", "fd")
    return ("ok", result)


def on_both(where, scenario):
    """Run ``scenario(dir)`` in the mount and in the plain dir; both results must be equal."""
    here, plain = where
    got, expected = scenario(here), scenario(plain)
    assert got == expected
    return got


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# -- files: create, read, write -----------------------------------------------------


def test_create_write_read_and_offsets(where):
    def scenario(d):
        fd = os.open(d / "f", os.O_CREAT | os.O_WRONLY, 0o644)
        assert os.write(fd, b"hello world\n") == 12
        assert os.pwrite(fd, b"W", 6) == 1
        os.close(fd)
        fd = os.open(d / "f", os.O_RDONLY)
        try:
            return (os.read(fd, 100), os.pread(fd, 5, 6), os.pread(fd, 10, 100),
                    os.fstat(fd).st_size, stat.S_IMODE(os.stat(d / "f").st_mode))
        finally:
            os.close(fd)
    assert on_both(where, scenario)[0] == b"hello World\n"


def test_o_append_from_two_descriptors(where):
    def scenario(d):
        (d / "log").write_bytes(b"start\n")
        a = os.open(d / "log", os.O_WRONLY | os.O_APPEND)
        b = os.open(d / "log", os.O_WRONLY | os.O_APPEND)
        try:
            os.write(a, b"a1\n")
            os.write(b, b"b1\n")
            os.write(a, b"a2\n")
        finally:
            os.close(a)
            os.close(b)
        return read(d / "log")
    assert on_both(where, scenario) == b"start\na1\nb1\na2\n"


def test_truncate_and_ftruncate_grow_and_shrink(where):
    def scenario(d):
        (d / "t").write_bytes(b"0123456789")
        os.truncate(d / "t", 4)
        after_shrink = read(d / "t")
        os.truncate(d / "t", 8)
        after_grow = read(d / "t")
        fd = os.open(d / "t", os.O_RDWR)
        try:
            os.ftruncate(fd, 2)
            small = (os.fstat(fd).st_size, os.pread(fd, 100, 0))
            os.ftruncate(fd, 5000)
            big = os.fstat(fd).st_size
        finally:
            os.close(fd)
        return after_shrink, after_grow, small, big, read(d / "t")
    result = on_both(where, scenario)
    assert result[0] == b"0123"
    assert result[1] == b"0123\0\0\0\0"
    assert result[2] == (2, b"01")
    assert result[4] == b"01" + b"\0" * 4998


def test_fallocate_grows_the_file(where):
    def scenario(d):
        fd = os.open(d / "fa", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            os.write(fd, b"abc")
            os.posix_fallocate(fd, 0, 1 << 20)
            size = os.fstat(fd).st_size
            head = os.pread(fd, 4, 0)
        finally:
            os.close(fd)
        return size, head, os.stat(d / "fa").st_size
    assert on_both(where, scenario) == (1 << 20, b"abc\0", 1 << 20)


def test_fsync_and_fdatasync(where):
    def scenario(d):
        fd = os.open(d / "s", os.O_CREAT | os.O_WRONLY, 0o644)
        try:
            os.write(fd, b"durable")
            os.fsync(fd)
            os.write(fd, b"!")
            os.fdatasync(fd)
        finally:
            os.close(fd)
        return read(d / "s")
    assert on_both(where, scenario) == b"durable!"


def test_open_errors_match_the_backing_filesystem(where):
    def scenario(d):
        (d / "exists").write_bytes(b"x")
        (d / "dir").mkdir()
        return [
            outcome(os.open, d / "exists", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644),
            outcome(os.open, d / "missing", os.O_RDONLY),
            outcome(os.open, d / "missing" / "deeper", os.O_CREAT | os.O_WRONLY, 0o644),
            outcome(os.mkdir, d / "exists"),
            outcome(os.mkdir, d / "dir"),
            outcome(os.open, d / "dir", os.O_WRONLY),
            outcome(os.unlink, d / "missing"),
            outcome(os.unlink, d / "dir"),
            outcome(os.rmdir, d / "exists"),
        ]
    result = on_both(where, scenario)
    assert result[:5] == [("err", "EEXIST"), ("err", "ENOENT"), ("err", "ENOENT"), ("err", "EEXIST"),
                          ("err", "EEXIST")]
    assert result[5] == ("err", "EISDIR")


# -- directories and names ----------------------------------------------------------------------


def test_mkdir_rmdir_and_enotempty(where):
    def scenario(d):
        os.mkdir(d / "sub")
        os.mkdir(d / "sub" / "deeper", 0o700)
        (d / "sub" / "deeper" / "f").write_bytes(b"x")
        busy = outcome(os.rmdir, d / "sub")
        os.unlink(d / "sub" / "deeper" / "f")
        os.rmdir(d / "sub" / "deeper")
        os.rmdir(d / "sub")
        return busy, os.path.exists(d / "sub"), sorted(os.listdir(d))
    assert on_both(where, scenario) == (("err", "ENOTEMPTY"), False, [])


def test_readdir_lists_every_kind_of_entry(where):
    def scenario(d):
        (d / "file").write_bytes(b"")
        os.mkdir(d / "dir")
        os.symlink("file", d / "link")
        os.mkfifo(d / "fifo")
        with os.scandir(d) as entries:
            return sorted((e.name, e.is_file(follow_symlinks=False), e.is_dir(follow_symlinks=False),
                           e.is_symlink()) for e in entries)
    assert [e[0] for e in on_both(where, scenario)] == ["dir", "fifo", "file", "link"]


def test_unlink(where):
    def scenario(d):
        (d / "gone").write_bytes(b"x")
        os.unlink(d / "gone")
        return os.path.lexists(d / "gone"), outcome(os.stat, d / "gone")
    assert on_both(where, scenario) == (False, ("err", "ENOENT"))


def test_rename_within_an_area(where):
    def scenario(d):
        (d / "a").write_bytes(b"A")
        (d / "b").write_bytes(b"B")
        ino = os.stat(d / "a").st_ino
        os.rename(d / "a", d / "c")                       # plain rename
        renamed = (os.path.exists(d / "a"), read(d / "c"), os.stat(d / "c").st_ino == ino)
        os.rename(d / "c", d / "b")                       # over an existing file
        over = (sorted(os.listdir(d)), read(d / "b"), os.stat(d / "b").st_ino == ino)
        os.makedirs(d / "tree" / "inner")
        (d / "tree" / "x").write_bytes(b"X")
        (d / "tree" / "inner" / "y").write_bytes(b"Y")
        os.rename(d / "tree", d / "moved")               # a directory with files
        moved = (os.path.exists(d / "tree"), read(d / "moved" / "x"), read(d / "moved" / "inner" / "y"))
        os.mkdir(d / "full")
        (d / "full" / "z").write_bytes(b"")
        onto_full = outcome(os.rename, d / "moved", d / "full")
        return renamed, over, moved, onto_full
    renamed, over, moved, onto_full = on_both(where, scenario)
    assert renamed == (False, b"A", True)
    assert over == (["b"], b"A", True)
    assert moved == (False, b"X", b"Y")
    assert onto_full == ("err", "ENOTEMPTY")


def test_rename_temp_to_output_is_a_real_rename(mounted, job):
    part = job / "temp" / "render.part"
    payload = os.urandom(300_000)
    with open(part, "wb") as f:
        f.write(payload)
    before = os.stat(part)
    os.rename(part, job / "output" / "render.bin")
    after = os.stat(job / "output" / "render.bin")
    assert after.st_ino == before.st_ino
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert not part.exists()
    assert read(job / "output" / "render.bin") == payload
    backing = mounted.data / "jobs" / job.name / "output" / "render.bin"
    assert os.stat(backing).st_ino == before.st_ino  # the same inode on disk: nothing was copied


def test_rename_and_link_across_jobs_and_shared_are_exdev(mounted):
    one, two = mounted.ws / unique("job"), mounted.ws / unique("job")
    os.mkdir(one)
    os.mkdir(two)
    shared = mounted.mnt / "shared" / unique("x")
    os.mkdir(shared)
    (one / "output" / "f").write_bytes(b"1")
    (shared / "s").write_bytes(b"s")
    assert errno_of(os.rename, one / "output" / "f", two / "output" / "f") == errno.EXDEV
    assert errno_of(os.rename, one / "output" / "f", shared / "f") == errno.EXDEV
    assert errno_of(os.rename, shared / "s", one / "temp" / "s") == errno.EXDEV
    assert errno_of(os.link, one / "output" / "f", two / "output" / "f") == errno.EXDEV
    assert errno_of(os.link, one / "output" / "f", shared / "f") == errno.EXDEV
    assert errno_of(os.link, shared / "s", one / "output" / "s") == errno.EXDEV
    # Nothing moved.
    assert read(one / "output" / "f") == b"1" and read(shared / "s") == b"s"
    assert os.listdir(two / "output") == [] and sorted(os.listdir(shared)) == ["s"]


def test_mv_across_jobs_copies_instead(mounted):
    one, two = mounted.ws / unique("job"), mounted.ws / unique("job")
    os.mkdir(one)
    os.mkdir(two)
    (one / "output" / "f").write_bytes(b"moved by copy")
    sh(f"mv {one}/output/f {two}/input/f")  # mv falls back to copy + unlink on EXDEV
    assert read(two / "input" / "f") == b"moved by copy"
    assert not (one / "output" / "f").exists()


def test_hard_links(where):
    def scenario(d):
        (d / "orig").write_bytes(b"linked")
        os.link(d / "orig", d / "alias")
        a, b = os.stat(d / "orig"), os.stat(d / "alias")
        same = (a.st_ino == b.st_ino, a.st_nlink, b.st_nlink)
        with open(d / "alias", "ab") as f:
            f.write(b"+")
        os.unlink(d / "orig")
        return same, os.stat(d / "alias").st_nlink, read(d / "alias"), sorted(os.listdir(d))
    assert on_both(where, scenario) == ((True, 2, 2), 1, b"linked+", ["alias"])


def test_write_through_one_hard_link_is_seen_at_once_through_the_other(where):
    here, _plain = where
    (here / "orig").write_bytes(b"linked")
    os.link(here / "orig", here / "alias")
    assert os.stat(here / "orig").st_size == 6  # the kernel now caches orig's attributes
    with open(here / "alias", "ab") as f:
        f.write(b"+")
    assert read(here / "orig") == b"linked+"


def test_hard_link_from_temp_to_output_in_one_job(job):
    (job / "temp" / "t").write_bytes(b"x")
    os.link(job / "temp" / "t", job / "output" / "o")
    assert os.stat(job / "temp" / "t").st_ino == os.stat(job / "output" / "o").st_ino
    assert os.stat(job / "output" / "o").st_nlink == 2


# -- symlinks, fifos ----------------------------------------------------------------------------


def test_symlinks_relative_and_absolute(where):
    def scenario(d):
        (d / "target.txt").write_bytes(b"pointed at")
        os.symlink("target.txt", d / "rel")
        os.symlink("/etc/passwd", d / "abs")
        os.symlink("nowhere", d / "dangling")
        return (os.readlink(d / "rel"), os.readlink(d / "abs"), read(d / "rel"),
                stat.S_ISLNK(os.lstat(d / "abs").st_mode), os.lstat(d / "abs").st_size,
                outcome(read, d / "dangling"), sorted(os.listdir(d)))
    result = on_both(where, scenario)
    assert result[:3] == ("target.txt", "/etc/passwd", b"pointed at")
    assert result[5] == ("err", "ENOENT")


def test_absolute_symlink_resolves_in_the_callers_namespace(mounted, where):
    here, _plain = where
    os.symlink("/etc/passwd", here / "pw")
    # The kernel resolves the target, for the caller: the caller's /etc/passwd, not a file in the data dir.
    assert read(here / "pw") == read("/etc/passwd")
    # The daemon stored the target as text and did not follow it: the backing entry is a symlink.
    rel = here.relative_to(mounted.mnt).parts
    backing = mounted.data.joinpath("jobs", *rel[1:]) if rel[0] == "workspaces" else mounted.data.joinpath(*rel)
    assert os.path.islink(backing / "pw") and os.readlink(backing / "pw") == "/etc/passwd"


def test_mkfifo_passes_data_between_threads(where):
    here, _plain = where
    os.mkfifo(here / "pipe", 0o600)
    assert stat.S_ISFIFO(os.stat(here / "pipe").st_mode)
    received = []

    def reader():
        with open(here / "pipe", "rb") as f:
            received.append(f.read())

    def writer():
        with open(here / "pipe", "wb") as f:
            f.write(b"through the pipe\n" * 1000)

    threads = [threading.Thread(target=reader), threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert received == [b"through the pipe\n" * 1000]


# -- metadata -------------------------------------------------------------------------------------


def test_chmod_chown_and_nanosecond_utime(where):
    times = (1_000_000_001_123_456_789, 1_234_567_890_987_654_321)

    def scenario(d):
        (d / "m").write_bytes(b"x")
        os.mkdir(d / "dir")
        os.chmod(d / "m", 0o640)
        os.chmod(d / "dir", 0o1750)
        os.chown(d / "m", 1234, 5678)
        os.utime(d / "m", ns=times)
        os.utime(d / "dir", ns=times)
        st, dst = os.stat(d / "m"), os.stat(d / "dir")
        fd = os.open(d / "m", os.O_RDONLY)
        try:
            os.fchmod(fd, 0o604)
            fst = os.fstat(fd)
        finally:
            os.close(fd)
        os.symlink("m", d / "ln")
        os.utime(d / "ln", ns=(times[1], times[0]), follow_symlinks=False)
        return (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_atime_ns, st.st_mtime_ns,
                stat.S_IMODE(dst.st_mode), dst.st_mtime_ns, stat.S_IMODE(fst.st_mode),
                os.lstat(d / "ln").st_mtime_ns, os.stat(d / "m").st_mtime_ns)
    assert on_both(where, scenario) == (0o640, 1234, 5678, times[0], times[1], 0o1750, times[1], 0o604,
                                        times[0], times[1])


def test_touch_with_nanoseconds_from_the_shell(where):
    expected = calendar.timegm((2001, 2, 3, 4, 5, 6)) * 10**9 + 123_456_789
    env = dict(os.environ, TZ="UTC")
    for d in where:
        sh('touch -d "2001-02-03 04:05:06.123456789" stamped && touch -m -d "2001-02-03 04:05:06.123456789" '
           "new.txt", cwd=d, env=env)
        assert os.stat(d / "stamped").st_mtime_ns == expected
        assert os.stat(d / "stamped").st_atime_ns == expected
        assert os.stat(d / "new.txt").st_mtime_ns == expected
        assert sh("stat -c %y stamped", cwd=d, env=env).stdout.startswith("2001-02-03 04:05:06.123456789")


def test_xattrs(where):
    def scenario(d):
        (d / "x").write_bytes(b"")
        os.mkdir(d / "xd")
        os.setxattr(d / "x", "user.colour", b"blue")
        os.setxattr(d / "xd", "user.kind", b"dir")
        results = [
            os.getxattr(d / "x", "user.colour"), os.getxattr(d / "xd", "user.kind"),
            sorted(os.listxattr(d / "x")),
            outcome(os.getxattr, d / "x", "user.missing"),
            outcome(os.setxattr, d / "x", "user.colour", b"red", os.XATTR_CREATE),
            outcome(os.setxattr, d / "x", "user.other", b"1", os.XATTR_REPLACE),
        ]
        os.setxattr(d / "x", "user.colour", b"green", os.XATTR_REPLACE)
        os.setxattr(d / "x", "user.big", os.urandom(1) * 3000)
        results.append(os.getxattr(d / "x", "user.colour"))
        results.append(len(os.getxattr(d / "x", "user.big")))
        os.removexattr(d / "x", "user.colour")
        results += [sorted(os.listxattr(d / "x")), outcome(os.getxattr, d / "x", "user.colour"),
                    outcome(os.removexattr, d / "x", "user.colour")]
        return results
    result = on_both(where, scenario)
    assert result[:6] == [b"blue", b"dir", ["user.colour"], ("err", "ENODATA"), ("err", "EEXIST"),
                          ("err", "ENODATA")]
    assert result[6:] == [b"green", 3000, ["user.big"], ("err", "ENODATA"), ("err", "ENODATA")]


def test_statvfs_is_the_data_dirs_filesystem(mounted):
    mine, data = os.statvfs(mounted.mnt), os.statvfs(mounted.data)
    assert (mine.f_blocks, mine.f_bsize, mine.f_frsize) == (data.f_blocks, data.f_bsize, data.f_frsize)
    assert mine.f_blocks > 0 and mine.f_namemax == 255
    assert os.statvfs(mounted.mnt / "shared").f_blocks == data.f_blocks


# -- bigger I/O ---------------------------------------------------------------------------------------


def test_shared_writable_mmap(where):
    def scenario(d):
        with open(d / "mapped", "wb") as f:
            f.write(b"." * 3 * mmap.PAGESIZE)
        fd = os.open(d / "mapped", os.O_RDWR)
        try:
            with mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as mm:
                mm[0:5] = b"hello"
                mm[mmap.PAGESIZE * 2:mmap.PAGESIZE * 2 + 5] = b"world"
                mm.flush()
        finally:
            os.close(fd)
        data = read(d / "mapped")
        return len(data), data[:5], data[mmap.PAGESIZE * 2:mmap.PAGESIZE * 2 + 6]
    assert on_both(where, scenario) == (3 * mmap.PAGESIZE, b"hello", b"world.")


def test_large_file_round_trip(where):
    here, _plain = where
    block = os.urandom(1 << 20)
    written = hashlib.sha256()
    with open(here / "big.bin", "wb", buffering=0) as f:
        for i in range(64):
            chunk = i.to_bytes(4, "big") + block[4:]
            assert f.write(chunk) == len(chunk)
            written.update(chunk)
    assert os.stat(here / "big.bin").st_size == 64 << 20
    readback = hashlib.sha256()
    with open(here / "big.bin", "rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            readback.update(chunk)
    assert readback.hexdigest() == written.hexdigest()


def test_unlinked_open_file_keeps_working(where):
    def scenario(d):
        fd = os.open(d / "victim", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            os.write(fd, b"before")
            os.unlink(d / "victim")
            gone = os.path.lexists(d / "victim")
            os.write(fd, b"+after")
            content = os.pread(fd, 100, 0)
            end = os.lseek(fd, 0, os.SEEK_END)  # the kernel asks for the size by handle here
            os.ftruncate(fd, 3)
            truncated = (os.lseek(fd, 0, os.SEEK_END), os.pread(fd, 100, 0))
            os.fsync(fd)
        finally:
            os.close(fd)
        return gone, content, end, truncated, sorted(os.listdir(d))
    assert on_both(where, scenario) == (False, b"before+after", 12, (3, b"bef"), [])


def test_fstat_of_an_unlinked_open_file(where):
    # fstat(2) reaches FUSE as a getattr without the file handle (libfuse #62): wsfs runs without
    # hard_remove so that the unlinked file keeps a (hidden) name and fstat, mmap and tmpfile() work.
    here, _plain = where
    fd = os.open(here / "victim", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"before")
        os.unlink(here / "victim")
        st = os.fstat(fd)
    finally:
        os.close(fd)
    assert (st.st_size, st.st_nlink) == (6, 0)


# -- the shell ---------------------------------------------------------------------------------------


def test_shell_session(where):
    script = (
        "set -e\n"
        "mkdir d\n"
        "echo hello > d/f\n"
        "cat d/f\n"
        "mv d/f d/g\n"
        "ln d/g d/hard\n"
        "ln -s g d/soft\n"
        "cat d/soft\n"
        "mkfifo d/p\n"
        "(echo through-fifo > d/p &)\n"
        "cat d/p\n"
        "echo more >> d/hard\n"
        "cat d/g\n"
        "touch -d '2001-02-03 04:05:06.123456789' d/g\n"
        "stat -c '%h %F %y' d/g\n"
        "stat -c '%F %N' d/soft\n"
        "ls d\n"
    )
    outputs = [sh(script, cwd=d, env=dict(os.environ, TZ="UTC")).stdout for d in where]
    assert outputs[0] == outputs[1]
    assert outputs[0].splitlines()[:5] == ["hello", "hello", "through-fifo", "hello", "more"]
    assert "2 regular file 2001-02-03 04:05:06.123456789" in outputs[0]


def test_cp_a_tree_in_and_diff(where, tmp_path):
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "empty").mkdir()
    (src / "a.txt").write_text("alpha\n")
    (src / "sub" / "b.bin").write_bytes(os.urandom(200_000))
    (src / "sub" / "deeper" / "c").write_text("gamma\n")
    (src / "secret").write_text("mine\n")
    os.chmod(src / "secret", 0o600)
    os.symlink("sub/b.bin", src / "link")
    os.utime(src / "a.txt", ns=(1_500_000_000_111_222_333, 1_500_000_000_444_555_666))
    here, _plain = where
    sh(f"cp -a {src} {here}/")
    result = sh(f"diff -r {src} {here}/src", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    for rel in ["a.txt", "sub/b.bin", "sub/deeper/c", "secret", "link", "empty", "sub"]:
        a, b = os.lstat(src / rel), os.lstat(here / "src" / rel)
        assert (rel, b.st_mode, b.st_size, b.st_mtime_ns) == (rel, a.st_mode, a.st_size, a.st_mtime_ns)
    assert os.readlink(here / "src" / "link") == "sub/b.bin"
