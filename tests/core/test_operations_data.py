"""File data and metadata through the operations, no mount: writes at offsets, truncate,
fallocate, quotas at write time, modes, times, xattrs, statfs (docs/spec.md §3, §8)."""

from __future__ import annotations

import errno
import os
import stat

from operations_support import refused

FALLOC_FL_KEEP_SIZE = 1


def test_a_write_past_the_end_leaves_a_hole_and_the_usage_is_the_size(f):
    f.write("/workspaces/j/output/sparse", b"")
    with f.opened("/workspaces/j/output/sparse", os.O_WRONLY) as fi:
        assert f.ops.write("/workspaces/j/output/sparse", b"end", 4096, fi) == 3
    data = f.read("/workspaces/j/output/sparse")
    assert len(data) == 4099 and data[:4096] == bytes(4096) and data[4096:] == b"end"
    assert f.job("j")["usage"] == {"bytes": 4099, "files": 1}


def test_truncate_moves_the_usage_both_ways(f):
    f.write("/workspaces/j/temp/t", b"x" * 100)
    f.ops.truncate("/workspaces/j/temp/t", 1000)
    assert f.job("j")["usage"] == {"bytes": 1000, "files": 1}
    f.ops.truncate("/workspaces/j/temp/t", 10)
    assert f.job("j")["usage"] == {"bytes": 10, "files": 1}
    assert f.read("/workspaces/j/temp/t") == b"x" * 10


def test_truncate_past_the_quota_is_edquot_and_leaves_the_file(fs):
    f = fs()
    f.command("/.wsfs/control", "create q quota=4K")
    f.write("/workspaces/q/output/f", b"y" * 1000)
    refused(errno.EDQUOT, f.ops.truncate, "/workspaces/q/output/f", 8192)
    assert f.ops.getattr("/workspaces/q/output/f")["st_size"] == 1000
    f.ops.truncate("/workspaces/q/output/f", 4096)
    assert f.job("q")["usage"]["bytes"] == 4096


def test_fallocate_is_charged_unless_it_keeps_the_size(fs):
    f = fs()
    f.command("/.wsfs/control", "create q quota=8K")
    f.write("/workspaces/q/output/f", b"")
    with f.opened("/workspaces/q/output/f", os.O_WRONLY) as fi:
        refused(errno.EDQUOT, f.ops.fallocate, "/workspaces/q/output/f", 0, 0, 16384, fi)
        f.ops.fallocate("/workspaces/q/output/f", FALLOC_FL_KEEP_SIZE, 0, 16384, fi)
        f.ops.fallocate("/workspaces/q/output/f", 0, 0, 4096, fi)
    assert f.ops.getattr("/workspaces/q/output/f")["st_size"] == 4096
    assert f.job("q")["usage"] == {"bytes": 4096, "files": 1}


def test_the_quota_covers_the_sum_of_all_areas(fs):
    f = fs()
    f.command("/.wsfs/control", "create q quota=2K")
    f.write("/workspaces/q/input/a", b"a" * 1000)
    f.write("/workspaces/q/temp/b", b"b" * 1000)
    refused(errno.EDQUOT, f.write, "/workspaces/q/output/c", b"c" * 100)
    f.ops.unlink("/workspaces/q/temp/b")
    f.write("/workspaces/q/output/c", b"c" * 100)
    assert f.job("q")["usage"] == {"bytes": 1100, "files": 2}


def test_a_refused_write_writes_nothing_at_all(fs):
    f = fs()
    f.command("/.wsfs/control", "create q quota=1K")
    f.write("/workspaces/q/output/f", b"0123456789")
    with f.opened("/workspaces/q/output/f", os.O_WRONLY) as fi:
        refused(errno.EDQUOT, f.ops.write, "/workspaces/q/output/f", b"z" * 2000, 5, fi)
    assert f.read("/workspaces/q/output/f") == b"0123456789"
    assert f.job("q")["usage"] == {"bytes": 10, "files": 1}


def test_modes_and_times_are_set_and_the_manifest_follows_the_mtime(f):
    f.write("/workspaces/j/output/f", b"abc")
    f.ops.chmod("/workspaces/j/output/f", 0o600)
    assert stat.S_IMODE(f.ops.getattr("/workspaces/j/output/f")["st_mode"]) == 0o600
    f.ops.utimens("/workspaces/j/output/f", (1_000_000_000_000_000_000, 1_500_000_000_123_456_789))
    assert f.ops.getattr("/workspaces/j/output/f")["st_mtime"] == 1_500_000_000_123_456_789  # ns (use_ns)
    [entry] = f.manifest("j")
    assert entry["mtime_ns"] == 1_500_000_000_123_456_789


def test_chmod_of_a_virtual_file_is_refused(f):
    refused(errno.EPERM, f.ops.chmod, "/workspaces/j/.state", 0o666)
    refused(errno.EPERM, f.ops.chmod, "/.wsfs/status", 0o666)
    refused(errno.EPERM, f.ops.chown, "/workspaces", 1, 1)
    refused(errno.ENOENT, f.ops.chmod, "/workspaces/j/output/nosuch", 0o600)


def test_a_job_root_may_be_chmodded_by_its_owner_to_make_it_private(f):
    f.ops.chmod("/workspaces/j", 0o700)
    assert stat.S_IMODE(f.ops.getattr("/workspaces/j")["st_mode"]) == 0o700
    assert stat.S_IMODE(f.ops.getattr("/workspaces/j/.state")["st_mode"]) & 0o077 == 0


def test_user_xattrs_are_kept_listed_and_removed(f):
    f.write("/workspaces/j/output/f", b"")
    f.ops.setxattr("/workspaces/j/output/f", "user.origin", b"camera-7", 0)
    assert f.ops.getxattr("/workspaces/j/output/f", "user.origin") == b"camera-7"
    assert "user.origin" in f.ops.listxattr("/workspaces/j/output/f")
    f.ops.removexattr("/workspaces/j/output/f", "user.origin")
    refused(errno.ENODATA, f.ops.getxattr, "/workspaces/j/output/f", "user.origin")
    refused(errno.ENODATA, f.ops.getxattr, "/workspaces/j/.state", "user.origin")
    assert f.ops.listxattr("/.wsfs/status") == []
    refused(errno.ENOENT, f.ops.getxattr, "/workspaces/j/output/nosuch", "user.origin")


def test_statfs_is_the_data_dirs_disk(fs, tmp_path):
    f = fs()
    got = f.ops.statfs("/")
    disk = os.statvfs(tmp_path / "data")
    assert got["f_bsize"] == disk.f_bsize and got["f_blocks"] == disk.f_blocks
    assert got["f_namemax"] == disk.f_namemax


def test_fsync_and_flush_of_a_file_and_of_a_virtual_file(f):
    f.write("/workspaces/j/output/f", b"x")
    with f.opened("/workspaces/j/output/f", os.O_WRONLY) as fi:
        assert f.ops.fsync("/workspaces/j/output/f", 0, fi) == 0
        assert f.ops.fsync("/workspaces/j/output/f", 1, fi) == 0
    with f.opened("/workspaces/j/.job", os.O_RDONLY) as fi:
        assert f.ops.fsync("/workspaces/j/.job", 0, fi) == 0
        refused(errno.EOPNOTSUPP, f.ops.fallocate, "/workspaces/j/.job", 0, 0, 10, fi)


def test_a_file_kept_open_keeps_its_data_after_unlink(f):
    f.write("/workspaces/j/temp/f", b"still here")
    with f.opened("/workspaces/j/temp/f", os.O_RDONLY) as fi:
        f.ops.unlink("/workspaces/j/temp/f")
        assert f.ops.read("/workspaces/j/temp/f", 100, 0, fi) == b"still here"
        assert f.ops.getattr("/workspaces/j/temp/f", fi)["st_size"] == 10
    assert f.ls("/workspaces/j/temp") == []
    assert f.job("j")["usage"] == {"bytes": 0, "files": 0}


def test_a_small_file_written_out_of_order_is_hashed_at_its_release_and_a_big_one_later(f, monkeypatch):
    """No running hash covers a file written out of order (or through kernel passthrough): one of
    at most ``hashing.INLINE_MAX`` bytes is hashed by its release itself, its entry made once with
    its sha256; a bigger one goes to the hasher thread (``hash_whole_later``)."""
    import hashlib

    from wsfs.core.hashing import INLINE_MAX

    handed = []
    monkeypatch.setattr(f.ops.hasher, "hash_whole_later", lambda fd, ino, size, done: handed.append(size))

    def out_of_order(path: str, size: int) -> bytes:
        half = size // 2
        first, second = os.urandom(half), os.urandom(size - half)
        fi = f.fi(os.O_WRONLY | os.O_CREAT)
        f.ops.create(path, 0o644, fi)
        try:
            f.ops.write(path, second, half, fi)
            f.ops.write(path, first, 0, fi)
            f.ops.flush(path, fi)
        finally:
            f.ops.release(path, fi)
        return first + second

    small = out_of_order("/workspaces/j/output/small", INLINE_MAX)
    entries = {e["path"]: e for e in f.manifest("j")}
    assert entries["output/small"]["sha256"] == hashlib.sha256(small).hexdigest()
    assert handed == []
    out_of_order("/workspaces/j/output/big", INLINE_MAX + 1)
    assert handed == [INLINE_MAX + 1]
    assert {e["path"]: e["sha256"] for e in f.manifest("j")}["output/big"] is None
