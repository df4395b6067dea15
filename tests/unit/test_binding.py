"""wsfs.binding: what it fixes in mfusepy, tested without a mount where it can be.

Through a mount these are exercised by every mount test; here the parts whose failure
would not show at once: the struct stat packing, and that no thread can invalidate
through a libfuse session once it is being torn down.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time

import pytest

from wsfs.fuse import binding  # first: it makes mfusepy load libfuse 3 (libfuse 2 may be installed too)
from wsfs.fuse.operations import _stat_dict

mfusepy = binding.mfusepy


def test_stat_bytes_equal_mfusepys_struct_field_by_field():
    for attrs in (_stat_dict(os.stat("/")), _stat_dict(os.lstat("/proc/self")),
                  {"st_mode": 0o100644, "st_nlink": 1, "st_uid": 65534, "st_gid": 65534, "st_size": 1 << 40,
                   "st_ino": (1 << 60) + 12345, "st_atime": 1_700_000_000_123_456_789, "st_mtime": 0,
                   "st_ctime": 5, "st_blksize": 4096},
                  {"st_mode": 0o040755, "st_nlink": 2}):  # missing keys are zero, as after mfusepy's memset
        theirs = mfusepy.c_stat()
        mfusepy.set_st_attrs(theirs, attrs, use_ns=True)
        ours = mfusepy.c_stat()
        ctypes.memmove(ctypes.byref(ours), binding.stat_bytes(attrs), ctypes.sizeof(ours))
        assert bytes(ours) == bytes(theirs), attrs
        assert ours.st_mtimespec.tv_sec == attrs.get("st_mtime", 0) // 10**9


@pytest.fixture
def fake_session(monkeypatch):
    """A live 'session' whose invalidations are recorded instead of sent to libfuse."""
    calls = []
    release = threading.Event()

    def fake_invalidate(fuse, path):
        calls.append(path)
        if path.startswith(b"/slow"):
            release.wait(5)
        return 0

    monkeypatch.setattr(binding, "_invalidate_path", fake_invalidate)
    monkeypatch.setattr(binding, "_fuse_ptr", 12345)
    return calls, release


def test_no_invalidation_after_the_session_ended(fake_session):
    calls, _release = fake_session
    binding.invalidate_path("/workspaces/a")
    binding.end_session()
    binding.invalidate_path("/workspaces/b")
    assert calls == [b"/workspaces/a"]


def test_ending_the_session_waits_for_an_invalidation_in_flight(fake_session):
    calls, release = fake_session
    worker = threading.Thread(target=binding.invalidate_path, args=("/slow/path",))
    worker.start()
    while not calls:
        time.sleep(0.001)
    ended = threading.Event()
    ender = threading.Thread(target=lambda: (binding.end_session(), ended.set()))
    ender.start()
    assert not ended.wait(0.3)  # libfuse must not free the session under the call
    release.set()
    assert ended.wait(5)
    worker.join(5)
    ender.join(5)


def test_the_daemon_runs_libfuse_through_the_session_ending_main():
    assert binding.LIBFUSE_VERSION >= (3, 12), "Debian 12 ships libfuse 3.14"
    assert mfusepy.fuse_main_real is binding._main_ending_the_session


# -- kernel passthrough: the libfuse 3.17 layouts mfusepy does not declare ------------------------------


def test_the_3_17_structs_and_ioctls_have_libfuses_layout():
    # fuse_common.h (3.17): flags, two words of bit fields, padding3, then fh at 16; backing_id
    # after poll_events at 36; 64 bytes in all.  fuse_conn_info: max_backing_stack_depth at 40.
    info = binding._FileInfo317
    assert (info.fh.offset, info.lock_owner.offset, info.poll_events.offset, info.backing_id.offset) == (16, 24, 32, 36)
    assert ctypes.sizeof(info) == 64
    assert binding._ConnInfo317.max_backing_stack_depth.offset == 40
    assert binding._ConnInfo317.capable.offset == mfusepy.fuse_conn_info.capable.offset
    assert binding._ConnInfo317.want.offset == mfusepy.fuse_conn_info.want.offset
    # linux/fuse.h: _IOW(229, 1, struct fuse_backing_map) and _IOW(229, 2, uint32_t)
    assert (binding._BACKING_OPEN, binding._BACKING_CLOSE) == (0x4010E501, 0x4004E502)
    assert binding.CAP_PASSTHROUGH == 1 << 29


def test_set_backing_id_writes_where_libfuse_reads_it():
    raw = (ctypes.c_uint8 * 64)()
    fi = mfusepy.fuse_file_info.from_buffer(raw)
    fi.fh = 0x1122334455667788
    binding.set_backing_id(fi, 7)
    assert int.from_bytes(bytes(raw[36:40]), "little") == 7
    assert fi.fh == 0x1122334455667788  # nothing else moved
    assert bytes(raw[40:]) == bytes(24)
