"""What the virtual files hold and how they read, through the operations (no mount;
docs/spec.md §3): sizes that are the contents' lengths, reads at any offset, ``.job``'s
documented fields, ``.manifest``'s lines, names a job id may and may not be."""

from __future__ import annotations

import errno
import itertools
import json
import os

import pytest
from operations_support import refused

from wsfs.core.lifecycle import JOB_DOCUMENT_FIELDS
from wsfs.fuse import operations


def test_a_virtual_files_size_is_its_length_and_reads_honour_offsets(f):
    f.write("/workspaces/j/output/a", b"a")
    for path in ("/workspaces/j/.state", "/workspaces/j/.job", "/workspaces/j/.manifest", "/.wsfs/jobs"):
        whole = f.read(path)
        assert f.ops.getattr(path)["st_size"] == len(whole), path
        with f.opened(path, os.O_RDONLY) as fi:
            assert f.ops.read(path, 5, 3, fi) == whole[3:8]
            assert f.ops.read(path, 100, len(whole), fi) == b""
            assert f.ops.read(path, 1 << 20, 0, fi) == whole


def test_the_job_document_holds_every_documented_field(fs):
    f = fs()
    f.command("/.wsfs/control", "create j quota=1M max_files=9 label=team=render")
    doc = f.job("j")
    assert set(JOB_DOCUMENT_FIELDS) <= set(doc)
    assert doc["version"] == 1 and doc["location"] == "workspaces" and doc["ending"] is None
    assert (doc["quota"], doc["max_files"], doc["labels"]) == (1 << 20, 9, {"team": "render"})
    assert doc["created_iso"].endswith("+00:00") and doc["ended"] is None and doc["ended_iso"] is None
    assert doc["areas"] == {"input": "input", "output": "keep", "temp": "scratch"}
    f.command("/workspaces/j/.state", "failed oops")
    doc = f.job("j")
    assert doc["state"] == "failed" and doc["ended_iso"].endswith("+00:00") and doc["sealed"] is True
    assert [h["state"] for h in doc["history"]] == ["running", "failed"]


def test_manifest_lines_are_sorted_json_with_area_size_mtime_and_sha256(f):
    f.write("/workspaces/j/temp/z", b"zz")
    f.write("/workspaces/j/input/m", b"m")
    f.write("/workspaces/j/output/a", b"aaa")
    lines = f.manifest("j")
    assert [e["path"] for e in lines] == ["input/m", "output/a", "temp/z"]
    assert {e["area"] for e in lines} == {"input", "output", "temp"}
    for entry in lines:
        assert set(entry) == {"path", "area", "size", "mtime_ns", "sha256"}
        st = os.stat(os.path.join(f.ops.service.tree.data_dir, "jobs", "j", entry["path"]))
        assert (entry["size"], entry["mtime_ns"]) == (st.st_size, st.st_mtime_ns)


@pytest.mark.parametrize("job_id", ["a", "A1", "job.2024-01-01_run", "x" * 128, "9lives"])
def test_good_job_ids_make_jobs(fs, job_id):
    f = fs()
    f.ops.mkdir(f"/workspaces/{job_id}", 0o755)
    assert f.ls("/workspaces") == [job_id]


@pytest.mark.parametrize("job_id", ["-a", ".hidden", "_x", "a b", "x" * 129, "caf\u00e9", "a:b", "a\\"])
def test_bad_job_ids_are_einval_and_make_nothing(fs, job_id):
    f = fs()
    refused(errno.EINVAL, f.ops.mkdir, f"/workspaces/{job_id}", 0o755)
    refused(errno.EINVAL, f.command, "/.wsfs/control", f"create {job_id}")
    assert f.ls("/workspaces") == []
    assert json.loads(f.read("/.wsfs/events").splitlines()[-1])["kind"] == "rejected"


def test_names_of_255_bytes_are_fine_and_256_are_enametoolong(f):
    f.write("/workspaces/j/output/" + "n" * 255, b"ok")
    refused(errno.ENAMETOOLONG, f.write, "/workspaces/j/output/" + "n" * 256, b"no")
    assert f.ls("/workspaces/j/output") == ["n" * 255]


def test_a_listing_with_attributes_gives_what_getattr_gives_but_for_costly_virtual_files(f):
    """READDIRPLUS (binding.FUSE.readdir_fuse_3): every entry with the attributes a lookup would
    get, but .job and .manifest, whose size is their whole content."""
    f.write("/workspaces/j/output/a", b"aaa")
    f.ops.link("/workspaces/j/output/b", "/workspaces/j/output/a")
    f.ops.mkdir("/workspaces/j/output/d", 0o700)
    for directory in ("/workspaces/j/output", "/workspaces/j", "/workspaces", "/"):
        fh = f.ops.opendir(directory)
        try:
            listed = list(f.ops.readdir(None, fh, 0, plus=True))  # libfuse gives no path: nullpath_ok
        finally:
            f.ops.releasedir(directory, fh)
        # whole (libfuse >= 3.17 keeps it: every offset 0), or streamed, each entry the next's offset
        whole = len(listed) <= operations.WHOLE_LISTING_MAX
        assert [after for _n, _a, after in listed] == ([0] * len(listed) if whole else list(range(1, len(listed) + 1)))
        for name, attrs, _after in listed:
            path = f"{directory.rstrip('/')}/{name}"
            if name in (".", "..", ".job", ".manifest"):
                assert "st_nlink" not in attrs, path  # mode and inode only: looked up when asked
                continue
            expected = f.ops.getattr(path)
            keys = [k for k in ("st_mode", "st_ino", "st_size", "st_nlink", "st_uid") if k in expected]
            assert {k: attrs[k] for k in keys} == {k: expected[k] for k in keys}, path


def test_a_listing_read_in_parts_continues_where_it_stopped(f, monkeypatch):
    """A directory too big to give whole (or any, on libfuse < 3.17) streams, by offsets."""
    monkeypatch.setattr(operations, "WHOLE_LISTING_MAX", 20)
    for i in range(30):
        f.write(f"/workspaces/j/temp/f{i:02d}", b"")
    fh = f.ops.opendir("/workspaces/j/temp")
    try:
        first = list(itertools.islice(f.ops.readdir(None, fh, 0), 10))
        f.write("/workspaces/j/temp/late", b"")  # the listing was taken at offset 0: it stays as it was
        rest = list(f.ops.readdir(None, fh, first[-1][2]))
    finally:
        f.ops.releasedir("/workspaces/j/temp", fh)
    names = [name for name, _a, _o in first + rest]
    assert names[:2] == [".", ".."] and sorted(names[2:]) == [f"f{i:02d}" for i in range(30)]
    assert "late" in f.ls("/workspaces/j/temp")  # a new read from the start sees it


def test_a_listing_given_whole_ignores_the_offset_libfuse_applies_itself(f, monkeypatch):
    """A whole listing (every offset 0) is what libfuse keeps and seeks in itself: asked at an
    offset (a seekdir on a fresh descriptor), the operations give it whole all the same."""
    monkeypatch.setattr(operations, "WHOLE_LISTING_MAX", 100)
    for i in range(30):
        f.write(f"/workspaces/j/temp/f{i:02d}", b"")
    fh = f.ops.opendir("/workspaces/j/temp")
    try:
        listed = list(f.ops.readdir(None, fh, 12))
    finally:
        f.ops.releasedir("/workspaces/j/temp", fh)
    assert [name for name, _a, _o in listed][:2] == [".", ".."] and len(listed) == 32
    assert {after for _n, _a, after in listed} == {0}
