"""The kernel's caches of a mount stay true (the performance levers of ``fs.init_with_config``).

The kernel keeps names and attributes for ``CACHE_TIMEOUT_S`` and a file's pages across
opens (``auto_cache``).  Everything the daemon changes behind a request's back must drop
what the kernel holds of it, at once, not when the timeout runs out: the sizes of the
virtual files, a receipt rewritten by a second ending, a tree that left the view.  And the
data path's own levers (1 MiB reads, reads into libfuse's buffer) must give back exactly
the bytes written.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest
from conftest import sh

from wsfs.fuse.operations import CACHE_TIMEOUT_S

pytestmark = pytest.mark.mount


def stat_size(path: Path) -> int:
    return os.stat(path).st_size


def until(predicate, seconds: float = 3.0):
    """The first true value of ``predicate`` within ``seconds`` (well below CACHE_TIMEOUT_S)."""
    assert seconds < CACHE_TIMEOUT_S / 2
    end = time.monotonic() + seconds
    while True:
        value = predicate()
        if value or time.monotonic() > end:
            return value
        time.sleep(0.05)


def test_state_size_follows_a_transition_at_once(wsfs_mount):
    m = wsfs_mount
    sh("mkdir workspaces/sz", cwd=m.mnt)
    job = m.ws / "sz"
    assert stat_size(job / ".state") == len("running\n")  # the kernel now holds this size
    sh("echo 'failed out of disk' > workspaces/sz/.state", cwd=m.mnt)
    # No wait: the transition itself dropped the cached size before the write returned.
    assert stat_size(job / ".state") == len("failed\n")
    assert sh("cat workspaces/sz/.state", cwd=m.mnt).stdout == "failed\n"


def test_job_and_manifest_sizes_follow_new_files(wsfs_mount):
    m = wsfs_mount
    sh("mkdir workspaces/grow", cwd=m.mnt)
    job = m.ws / "grow"
    before = {name: stat_size(job / name) for name in (".job", ".manifest")}  # now cached
    # (17 bytes: usage's figures grow a digit, so .job's size changes too)
    sh("echo one > workspaces/grow/output/a.txt && echo two and more > workspaces/grow/output/b.txt", cwd=m.mnt)

    def recorded():  # the manifest batch landed (a read of .manifest flushes it)
        return sh("cat workspaces/grow/.manifest", cwd=m.mnt).stdout.count("\n") == 2
    assert until(recorded)
    # No wait: the commit that changed the record dropped the cached sizes.
    for name in (".job", ".manifest"):
        assert stat_size(job / name) == len(sh(f"cat workspaces/grow/{name}", cwd=m.mnt).stdout.encode()), name
        assert stat_size(job / name) != before[name], name
    lines = [json.loads(line) for line in (job / ".manifest").read_text().splitlines()]
    assert [entry["path"] for entry in lines] == ["output/a.txt", "output/b.txt"]


def test_wsfs_files_report_the_size_they_read(wsfs_mount):
    m = wsfs_mount
    events = m.mnt / ".wsfs" / "events"
    old = stat_size(events)
    sh("mkdir workspaces/ev1 workspaces/ev2", cwd=m.mnt)
    with open(events, "rb") as f:  # tail, less and wc: fstat after open, then read
        size = os.fstat(f.fileno()).st_size
        data = f.read()
    assert size == len(data) > old
    assert b'"ev2"' in data


def test_receipt_is_fresh_after_a_second_ending(wsfs_mount):
    m = wsfs_mount
    sh("mkdir workspaces/again && echo v1 > workspaces/again/output/r.txt", cwd=m.mnt)
    sh("echo 'failed first try' > workspaces/again/.state", cwd=m.mnt)
    receipt = m.ws / "again" / "receipt.json"
    assert json.loads(receipt.read_text())["state"] == "failed"  # its pages are now in the kernel
    sh("echo 'resume again' > .wsfs/control", cwd=m.mnt)
    sh("echo v2 > workspaces/again/output/r.txt && echo completed > workspaces/again/.state", cwd=m.mnt)
    # Same path, new file behind it: auto_cache must not serve the first receipt's pages.
    text = sh("cat workspaces/again/receipt.json", cwd=m.mnt).stdout
    doc = json.loads(text)
    assert doc["state"] == "completed"
    assert [o["sha256"] for o in doc["outputs"]] == [hashlib.sha256(b"v2\n").hexdigest()]


def test_archived_tree_is_gone_from_the_cache_at_once(wsfs_mount):
    m = wsfs_mount
    sh("mkdir workspaces/gone && mkdir workspaces/gone/output/d && echo x > workspaces/gone/output/d/f",
       cwd=m.mnt)
    deep = m.ws / "gone" / "output" / "d" / "f"
    assert deep.stat().st_size == 2  # cached: entry and attributes
    sh("echo failed > workspaces/gone/.state && echo archived > workspaces/gone/.state", cwd=m.mnt)
    assert not (m.ws / "gone").exists()
    assert not deep.exists()
    assert sh("test -e workspaces/gone/output/d/f", cwd=m.mnt, check=False).returncode == 1


def test_big_reads_and_writes_round_trip(wsfs_mount):
    """1 MiB requests both ways (zero-copy views of libfuse's buffers), cold and hot."""
    m = wsfs_mount
    sh("mkdir workspaces/big", cwd=m.mnt)
    blob = os.urandom(3 * (1 << 20) + 12345)
    path = m.ws / "big" / "output" / "blob"
    with open(path, "wb") as f:
        for start in range(0, len(blob), 1 << 20):
            f.write(blob[start:start + (1 << 20)])
    backing = m.data / "jobs" / "big" / "output" / "blob"
    assert backing.read_bytes() == blob
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    assert path.read_bytes() == blob  # cold: from the daemon
    assert path.read_bytes() == blob  # hot: the kernel's pages, kept across opens
    with open(path, "rb") as f:
        f.seek(1 << 20)
        assert f.read(5000) == blob[1 << 20:(1 << 20) + 5000]
    sha = sh("sha256sum workspaces/big/output/blob", cwd=m.mnt).stdout.split()[0]
    assert sha == hashlib.sha256(blob).hexdigest()


def test_hot_read_sees_an_overwrite_through_the_mount(wsfs_mount):
    m = wsfs_mount
    sh("mkdir workspaces/ow && printf aaaa > workspaces/ow/output/f", cwd=m.mnt)
    assert sh("cat workspaces/ow/output/f", cwd=m.mnt).stdout == "aaaa"
    sh("printf bb | dd of=workspaces/ow/output/f bs=1 seek=1 conv=notrunc status=none", cwd=m.mnt)
    assert sh("cat workspaces/ow/output/f", cwd=m.mnt).stdout == "abba"


@pytest.mark.skipif(os.geteuid() != 0, reason="the mount's readahead is set through sysfs, as root")
def test_readahead_is_raised_to_a_mebibyte(wsfs_mount):
    m = wsfs_mount
    device = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == str(m.mnt):
                device = fields[2]
    assert device is not None

    def raised():
        return Path(f"/sys/class/bdi/{device}/read_ahead_kb").read_text().strip() == "1024"
    assert until(raised)


def test_a_listing_brings_the_attributes_so_ls_l_asks_no_lookup_per_file(wsfs_mount):
    """READDIRPLUS (``binding.FUSE.readdir_fuse_3``): after ``ls -l`` of a directory whose names
    the kernel forgot, the daemon answered no getattr per file, and ``ls -l`` shows the truth."""
    from prometheus_client.parser import text_string_to_metric_families

    if os.geteuid() != 0:
        pytest.skip("dropping the kernel's dentry cache needs root")
    m = wsfs_mount
    sizes = {f"f{i:02d}": i * 100 for i in range(40)}
    sh("mkdir workspaces/j", cwd=m.mnt)
    for name, size in sizes.items():
        (m.ws / "j" / "output" / name).write_bytes(b"x" * size)

    def getattrs() -> float:
        text = (m.mnt / ".wsfs" / "metrics").read_text()
        return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
                   if s.name == "wsfs_fuse_requests_total" and s.labels.get("op") == "getattr")
    Path("/proc/sys/vm/drop_caches").write_text("2\n")  # the kernel forgets the names it looked up
    before = getattrs()
    listing = sh("ls -l --time-style=+ workspaces/j/output", cwd=m.mnt).stdout.splitlines()[1:]
    after = getattrs()
    assert {line.split()[-1]: int(line.split()[4]) for line in listing} == sizes
    assert after - before < 10, f"{after - before} getattr requests for an ls -l of {len(sizes)} files"


def test_a_big_listing_is_one_call_of_the_daemon_and_a_rewind_lists_afresh(wsfs_mount):
    """libfuse >= 3.17 keeps a listing the operations give whole (``binding.READDIR_BUFFERED``):
    the kernel's many READDIRs of a big directory cost the daemon one call, every entry is
    there with its attributes, and a rewind (a new ``ls``) sees what changed meanwhile."""
    from prometheus_client.parser import text_string_to_metric_families

    from wsfs.fuse.binding import READDIR_BUFFERED

    if not READDIR_BUFFERED:
        pytest.skip("libfuse < 3.17 gives listings by offset, one call of the daemon per READDIR")
    m = wsfs_mount
    sh("mkdir workspaces/big", cwd=m.mnt)
    out = m.ws / "big" / "output"
    names = {f"a-rather-long-file-name-to-fill-the-kernels-buffers-{i:04d}": i % 97 for i in range(1500)}
    for name, size in names.items():
        (out / name).write_bytes(b"x" * size)

    def readdirs() -> float:
        text = (m.mnt / ".wsfs" / "metrics").read_text()
        return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
                   if s.name == "wsfs_fuse_requests_total" and s.labels.get("op") == "readdir")
    before = readdirs()
    listing = sh("ls -l --time-style=+ workspaces/big/output", cwd=m.mnt).stdout.splitlines()[1:]
    assert readdirs() - before == 1
    assert {line.split()[-1]: int(line.split()[4]) for line in listing} == names
    (out / "one-more").write_text("new\n")
    os.unlink(out / next(iter(names)))
    listed = set(sh("ls -f workspaces/big/output", cwd=m.mnt).stdout.split())
    assert listed == (set(names) - {next(iter(names))}) | {"one-more", ".", ".."}



def test_a_directory_too_big_to_hold_whole_streams_every_entry(wsfs_mount):
    """Past ``WHOLE_LISTING_MAX`` entries a listing is given by offsets, a call per READDIR, so
    libfuse never holds a huge directory whole: every entry is still listed, once."""
    from prometheus_client.parser import text_string_to_metric_families

    from wsfs.fuse.operations import WHOLE_LISTING_MAX

    m = wsfs_mount
    sh("mkdir workspaces/huge", cwd=m.mnt)
    backing = m.data / "jobs" / "huge" / "output"  # made behind the daemon: a quick setup
    names = {f"entry-{i:05d}" for i in range(max(WHOLE_LISTING_MAX, 0) + 50)}
    for name in names:
        os.close(os.open(backing / name, os.O_WRONLY | os.O_CREAT, 0o644))

    def readdirs() -> float:
        text = (m.mnt / ".wsfs" / "metrics").read_text()
        return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
                   if s.name == "wsfs_fuse_requests_total" and s.labels.get("op") == "readdir")
    before = readdirs()
    listed = sh("ls -f workspaces/huge/output", cwd=m.mnt).stdout.split()
    assert sorted(listed) == sorted(names | {".", ".."})
    assert readdirs() - before > 10  # streamed: a call per READDIR of the kernel
