"""What the daemon spends on one GETXATTR of ``system.posix_acl_access`` (the kernel asks it for
every inode it checks permissions on once POSIX ACLs are on), in-process, no mount.

Drives ``WsfsOperations.getxattr`` on a fresh data dir: a file in a job's area (no ACL: ENODATA,
the common answer) and a job's ``.state`` (a control file).  Median of 5 runs of N calls.

    .venv/bin/python bench/getxattr_cost.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from wsfs.core.config import default_config
from wsfs.core.lifecycle import open_data_dir
from wsfs.fuse.binding import FuseOSError
from wsfs.fuse.operations import WsfsOperations


def per_call_us(ops: WsfsOperations, path: str, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        try:
            ops.getxattr(path, "system.posix_acl_access")
        except FuseOSError:
            pass
    return (time.perf_counter() - started) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        service = open_data_dir(os.path.join(tmp, "data"), default_config())
        ops = WsfsOperations(service, service.tree, context=lambda: (0, 0, os.getpid()), umask=lambda: 0o022)
        service.acls_enforced = True
        if not isinstance(getattr(type(ops), "posix_acl", None), property):
            ops.posix_acl = True  # before the flag lived in one place (the service)
        ops.mkdir("/workspaces/j", 0o755)
        Path(tmp, "data", "jobs", "j", "output", "f").write_bytes(b"x")
        for path in ("/workspaces/j/output/f", "/workspaces/j/.state"):
            runs = [per_call_us(ops, path, args.calls) for _ in range(5)]
            print(f"getxattr {path}: {statistics.median(runs):.1f} µs per call (median of 5 x {args.calls})")
        service.close()


if __name__ == "__main__":
    main()
