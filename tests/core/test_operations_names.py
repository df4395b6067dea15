"""Names through the operations, no mount: rename, link, symlink, mknod, unlink, rmdir, and
what each does to the manifest and the usage (docs/spec.md §3, §8).  The mount suites check
the same through the kernel; these check every rule and errno in milliseconds."""

from __future__ import annotations

import errno
import json
import os
import stat

from operations_support import ME, refused

RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


def manifest(f, job: str) -> dict[str, int]:
    """path -> size, as ``.manifest`` shows it."""
    return {e["path"]: e["size"] for e in f.manifest(job)}


def test_a_rename_in_an_area_moves_the_manifest_entry_and_keeps_the_usage(f):
    f.write("/workspaces/j/output/a", b"12345")
    f.ops.rename("/workspaces/j/output/a", "/workspaces/j/output/b")
    assert f.ls("/workspaces/j/output") == ["b"] and f.read("/workspaces/j/output/b") == b"12345"
    assert manifest(f, "j") == {"output/b": 5}
    assert f.job("j")["usage"] == {"bytes": 5, "files": 1}


def test_a_rename_between_areas_of_one_job_is_allowed(f):
    f.write("/workspaces/j/temp/part", b"abc")
    f.ops.rename("/workspaces/j/temp/part", "/workspaces/j/output/final")
    assert manifest(f, "j") == {"output/final": 3}
    f.command("/workspaces/j/.state", "completed")
    assert f.read("/workspaces/j/output/final") == b"abc"


def test_a_rename_of_a_directory_moves_every_entry_below_it(f):
    f.ops.mkdir("/workspaces/j/temp/d", 0o755)
    f.ops.mkdir("/workspaces/j/temp/d/e", 0o755)
    f.write("/workspaces/j/temp/d/x", b"x")
    f.write("/workspaces/j/temp/d/e/y", b"yy")
    f.ops.rename("/workspaces/j/temp/d", "/workspaces/j/output/d2")
    assert manifest(f, "j") == {"output/d2/e/y": 2, "output/d2/x": 1}


def test_a_rename_between_jobs_is_exdev_so_that_mv_copies(fs):
    f = fs()
    f.ops.mkdir("/workspaces/a", 0o755)
    f.ops.mkdir("/workspaces/b", 0o755)
    f.write("/workspaces/a/output/f", b"data")
    refused(errno.EXDEV, f.ops.rename, "/workspaces/a/output/f", "/workspaces/b/output/f")
    refused(errno.EXDEV, f.ops.link, "/workspaces/b/output/f", "/workspaces/a/output/f")
    assert manifest(f, "a") == {"output/f": 4} and manifest(f, "b") == {}


def test_areas_control_files_and_job_roots_are_not_renamed(f):
    refused(errno.EPERM, f.ops.rename, "/workspaces/j/output", "/workspaces/j/temp/out")
    refused(errno.EPERM, f.ops.rename, "/workspaces/j/temp/x", "/workspaces/j/input")
    refused(errno.EPERM, f.ops.rename, "/workspaces/j/.state", "/workspaces/j/output/state")
    refused(errno.EPERM, f.ops.rename, "/workspaces/j", "/workspaces/k")
    assert f.ls("/workspaces") == ["j"]
    assert f.ls("/workspaces/j") == [".job", ".manifest", ".state", "input", "output", "temp"]


def test_a_rename_over_a_file_takes_the_replaced_one_off_the_usage(f):
    f.write("/workspaces/j/output/old", b"x" * 100)
    f.write("/workspaces/j/output/new", b"y" * 10)
    f.ops.rename("/workspaces/j/output/new", "/workspaces/j/output/old")
    assert manifest(f, "j") == {"output/old": 10}
    assert f.job("j")["usage"] == {"bytes": 10, "files": 1}


def test_rename_noreplace_refuses_an_existing_name_and_changes_nothing(f):
    f.write("/workspaces/j/output/a", b"a")
    f.write("/workspaces/j/output/b", b"bb")
    refused(errno.EEXIST, f.ops.rename, "/workspaces/j/output/a", "/workspaces/j/output/b", RENAME_NOREPLACE)
    assert manifest(f, "j") == {"output/a": 1, "output/b": 2}


def test_rename_exchange_swaps_the_files_and_their_manifest_entries(f):
    f.write("/workspaces/j/output/a", b"a")
    f.write("/workspaces/j/temp/b", b"bbb")
    f.ops.rename("/workspaces/j/output/a", "/workspaces/j/temp/b", RENAME_EXCHANGE)
    assert f.read("/workspaces/j/output/a") == b"bbb" and f.read("/workspaces/j/temp/b") == b"a"
    assert manifest(f, "j") == {"output/a": 3, "temp/b": 1}
    assert f.job("j")["usage"] == {"bytes": 4, "files": 2}


def test_a_hard_link_is_a_second_manifest_entry_and_counts_again(f):
    f.write("/workspaces/j/output/a", b"hello")
    f.ops.link("/workspaces/j/temp/b", "/workspaces/j/output/a")
    assert f.ops.getattr("/workspaces/j/output/a")["st_nlink"] == 2
    assert manifest(f, "j") == {"output/a": 5, "temp/b": 5}
    assert f.job("j")["usage"] == {"bytes": 10, "files": 2}
    f.ops.unlink("/workspaces/j/output/a")
    assert f.ops.getattr("/workspaces/j/temp/b")["st_nlink"] == 1
    assert f.job("j")["usage"] == {"bytes": 5, "files": 1}


def test_max_files_counts_links_and_mknod_too(fs):
    f = fs()
    f.command("/.wsfs/control", "create j max_files=2")
    f.write("/workspaces/j/output/a", b"a")
    f.ops.link("/workspaces/j/output/b", "/workspaces/j/output/a")
    refused(errno.EDQUOT, f.ops.link, "/workspaces/j/output/c", "/workspaces/j/output/a")
    refused(errno.EDQUOT, f.ops.mknod, "/workspaces/j/output/d", stat.S_IFREG | 0o644, 0)
    assert f.ls("/workspaces/j/output") == ["a", "b"]
    f.ops.unlink("/workspaces/j/output/b")
    f.ops.mknod("/workspaces/j/output/d", stat.S_IFREG | 0o644, 0)
    assert manifest(f, "j") == {"output/a": 1, "output/d": 0}


def test_symlinks_fifos_and_directories_are_not_in_the_manifest(f):
    f.ops.symlink("/workspaces/j/output/link", "../input/elsewhere")
    f.ops.mknod("/workspaces/j/output/pipe", stat.S_IFIFO | 0o600, 0)
    f.ops.mkdir("/workspaces/j/output/dir", 0o755)
    assert f.ops.readlink("/workspaces/j/output/link") == "../input/elsewhere"
    assert stat.S_ISLNK(f.ops.getattr("/workspaces/j/output/link")["st_mode"])
    assert stat.S_ISFIFO(f.ops.getattr("/workspaces/j/output/pipe")["st_mode"])
    assert manifest(f, "j") == {}
    assert f.job("j")["usage"] == {"bytes": 0, "files": 0}


def test_a_symlink_is_never_followed_out_of_the_data_dir(fs, tmp_path):
    f = fs()
    outside = tmp_path / "outside"
    outside.write_bytes(b"secret")
    f.ops.mkdir("/workspaces/j", 0o755)
    f.ops.symlink("/workspaces/j/output/link", str(outside))
    refused(errno.ELOOP, f.read, "/workspaces/j/output/link/x")
    refused(errno.ELOOP, f.ls, "/workspaces/j/output/link")
    assert outside.read_bytes() == b"secret"


def test_names_at_a_jobs_root_are_refused_for_every_kind_of_entry(f):
    refused(errno.EPERM, f.ops.symlink, "/workspaces/j/link", "output")
    refused(errno.EPERM, f.ops.mknod, "/workspaces/j/pipe", stat.S_IFIFO | 0o600, 0)
    refused(errno.EPERM, f.ops.link, "/workspaces/j/again", "/workspaces/j/output")
    refused(errno.EPERM, f.ops.unlink, "/workspaces/j/.job")
    refused(errno.EPERM, f.ops.rmdir, "/workspaces/j/temp")


def test_rmdir_of_a_full_directory_is_enotempty_and_of_an_empty_one_works(f):
    f.ops.mkdir("/workspaces/j/temp/d", 0o755)
    f.write("/workspaces/j/temp/d/x", b"x")
    refused(errno.ENOTEMPTY, f.ops.rmdir, "/workspaces/j/temp/d")
    f.ops.unlink("/workspaces/j/temp/d/x")
    f.ops.rmdir("/workspaces/j/temp/d")
    assert f.ls("/workspaces/j/temp") == []
    refused(errno.ENOENT, f.ops.unlink, "/workspaces/j/temp/nosuch")
    refused(errno.ENOENT, f.ops.rmdir, "/workspaces/j/temp/nosuch")


def test_a_new_entry_belongs_to_its_caller(fs):
    f = fs()
    f.ops.mkdir("/workspaces/j", 0o777)
    f.caller.uid, f.caller.gid = 4321, 8765
    f.write("/workspaces/j/temp/theirs", b"")
    f.ops.mkdir("/workspaces/j/temp/dir", 0o755)
    f.ops.symlink("/workspaces/j/temp/link", "theirs")
    if os.geteuid() == 0:
        for name in ("theirs", "dir", "link"):
            attrs = f.ops.getattr(f"/workspaces/j/temp/{name}")
            assert (attrs["st_uid"], attrs["st_gid"]) == (4321, 8765), name
    assert f.ops.getattr("/workspaces/j")["st_uid"] == ME[0]


def test_a_sealed_job_refuses_every_name_change(f):
    f.write("/workspaces/j/output/a", b"a")
    f.ops.mkdir("/workspaces/j/temp/sub", 0o755)
    f.command("/workspaces/j/.state", "failed")
    for call, args in ((f.ops.link, ("/workspaces/j/output/b", "/workspaces/j/output/a")),
                       (f.ops.symlink, ("/workspaces/j/output/l", "a")),
                       (f.ops.mknod, ("/workspaces/j/output/p", stat.S_IFIFO | 0o600, 0)),
                       (f.ops.rmdir, ("/workspaces/j/temp/sub",)),
                       (f.ops.rename, ("/workspaces/j/output/a", "/workspaces/j/temp/a")),
                       (f.ops.setxattr, ("/workspaces/j/output/a", "user.k", b"v", 0))):
        refused(errno.EROFS, call, *args)
    assert manifest(f, "j") == {"output/a": 1}


# -- libfuse's hidden names (a file unlinked while open, without hard_remove) -----------------


HIDDEN = ".fuse_hidden0000002a00000001"


def backing_names(tmp_path, rel: str) -> list[str]:
    return sorted(os.listdir(tmp_path / "data" / "jobs" / rel))


def test_a_file_unlinked_while_open_is_hidden_out_of_the_manifest_and_gone_at_its_last_close(f, tmp_path):
    f.write("/workspaces/j/output/log", b"0123456789")
    with f.opened("/workspaces/j/output/log", os.O_RDWR) as fi:
        # what libfuse does for `rm log` while log is open: a rename to a hidden name
        f.ops.rename("/workspaces/j/output/log", f"/workspaces/j/output/{HIDDEN}")
        assert f.ls("/workspaces/j/output") == []  # a listing does not show it
        assert manifest(f, "j") == {} and f.job("j")["usage"] == {"bytes": 0, "files": 0}
        # POSIX says 0 links; libfuse's getattr takes one off a hidden node's count itself
        assert f.ops.getattr(f"/workspaces/j/output/{HIDDEN}", fi)["st_nlink"] == 1
        assert f.ops.read(f"/workspaces/j/output/{HIDDEN}", 100, 0, fi) == b"0123456789"
        assert backing_names(tmp_path, "j/output") == [HIDDEN]
    assert backing_names(tmp_path, "j/output") == []  # removed at the last close, not left for the quota


def test_a_hidden_name_whose_last_close_came_first_goes_at_once(fs, tmp_path):
    """libfuse #746: the RELEASE can overtake the rename that hides the file."""
    f = fs()
    f.ops.mkdir("/workspaces/j", 0o755)
    f.write("/workspaces/j/temp/t", b"t")
    with f.opened("/workspaces/j/temp/t", os.O_RDONLY):
        pass
    f.ops.rename("/workspaces/j/temp/t", f"/workspaces/j/temp/{HIDDEN}")
    assert backing_names(tmp_path, "j/temp") == []
    # libfuse's own unlink of it (3.17 makes one at once when it finds the file closed) finds it gone: done
    assert f.ops.unlink(f"/workspaces/j/temp/{HIDDEN}") == 0
    refused(errno.ENOENT, f.ops.unlink, "/workspaces/j/temp/t")  # a name of a user's is no such thing


def test_hidden_names_of_a_job_that_ends_are_removed_with_the_seal(f, tmp_path):
    f.write("/workspaces/j/output/keep", b"k")
    f.write("/workspaces/j/output/open", b"o")
    with f.opened("/workspaces/j/output/open", os.O_RDONLY) as fi:
        f.ops.rename("/workspaces/j/output/open", f"/workspaces/j/output/{HIDDEN}")
        f.command("/workspaces/j/.state", "completed")
        assert backing_names(tmp_path, "j/output") == ["keep"]
        assert f.ops.read(f"/workspaces/j/output/{HIDDEN}", 10, 0, fi) == b"o"  # the open file still reads
    receipt = json.loads(f.read("/workspaces/j/receipt.json"))
    assert [o["path"] for o in receipt["outputs"]] == ["output/keep"]


def test_a_rename_of_a_name_onto_itself_changes_nothing(f):
    """Found by the hypothesis model (test_operations_model.py): the entry used to leave the manifest."""
    f.write("/workspaces/j/output/a", b"abc")
    f.ops.rename("/workspaces/j/output/a", "/workspaces/j/output/a")
    assert manifest(f, "j") == {"output/a": 3} and f.job("j")["usage"] == {"bytes": 3, "files": 1}
    refused(errno.ENOENT, f.ops.rename, "/workspaces/j/output/nosuch", "/workspaces/j/output/nosuch")


def test_a_write_through_one_link_changes_every_name_of_the_file_in_the_manifest(f):
    """Found by the hypothesis model: the other name's entry kept the old size."""
    f.write("/workspaces/j/output/b", b"")
    f.ops.link("/workspaces/j/temp/a", "/workspaces/j/output/b")
    f.write("/workspaces/j/temp/a", b"grown", os.O_WRONLY)
    assert manifest(f, "j") == {"output/b": 5, "temp/a": 5}
    assert f.job("j")["usage"] == {"bytes": 10, "files": 2}
    f.ops.truncate("/workspaces/j/output/b", 2)
    assert manifest(f, "j") == {"output/b": 2, "temp/a": 2}


def test_growing_a_linked_file_is_charged_once_per_name(fs):
    """Found by the hypothesis model: the quota charged the growth once while the usage counted it per name."""
    f = fs()
    f.command("/.wsfs/control", "create q quota=8K")
    f.write("/workspaces/q/output/a", b"")
    f.ops.link("/workspaces/q/output/b", "/workspaces/q/output/a")
    refused(errno.EDQUOT, f.ops.truncate, "/workspaces/q/output/a", 5000)  # 2 x 5000 > 8K
    f.ops.truncate("/workspaces/q/output/a", 4096)  # 2 x 4096 = 8K
    assert f.job("q")["usage"] == {"bytes": 8192, "files": 2}
    refused(errno.EDQUOT, f.write, "/workspaces/q/output/b", b"x", os.O_WRONLY | os.O_APPEND)
