"""Tree walks through the mount: ``ls -lR``, ``du -s``, ``find -type f``, ``tar -c``, ``ls -R``, with the kernel's
READDIRPLUS answered (each entry with its attributes, ``binding.FUSE.readdir_fuse_3``) and
without (``WSFS_READDIRPLUS=0``: names only, then a LOOKUP per entry), against the bare disk.

One tree of ``--dirs`` x ``--files`` files of 1 KiB, made in a job's ``output/`` behind the
mount (the walks read listings and attributes; the manifest plays no part); the same tree on
the data dir's disk.  Each round drops the kernel's dentry and inode caches first (root), then
times each walk on each side in turn; medians of ``--rounds``.

    .venv/bin/python bench/listing_cost.py --dirs 40 --files 250 --rounds 5
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from mounted import mounted

WALKS = {"ls -lR": ["ls", "-lR"], "du -s": ["du", "-s"], "find -type f": ["find", "-type", "f"],
         "tar -c": ["tar", "-cf", "/dev/null", "."], "ls -R": ["ls", "-R"]}


def make_tree(root: Path, dirs: int, files: int) -> None:
    block = b"x" * 1024
    for d in range(dirs):
        sub = root / f"d{d:03d}"
        sub.mkdir(parents=True)
        for f in range(files):
            (sub / f"f{f:04d}").write_bytes(block)


def drop_caches() -> None:
    if os.geteuid() == 0:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("2\n")


def timed(argv: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


@contextlib.contextmanager
def environ(**values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dirs", type=int, default=40)
    parser.add_argument("--files", type=int, default=250)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    native = Path(tempfile.mkdtemp(prefix="wsfs-listing-native-"))
    try:
        make_tree(native / "tree", args.dirs, args.files)
        with mounted(prefix="wsfs-listing-plus-") as (mnt_plus, data_plus), \
                environ(WSFS_READDIRPLUS="0"), mounted(prefix="wsfs-listing-names-") as (mnt_names, data_names):
            sides = {"native": native / "tree"}
            for name, mnt, data in (("wsfs", mnt_plus, data_plus), ("wsfs, no readdirplus", mnt_names, data_names)):
                os.mkdir(mnt / "workspaces" / "walk")
                make_tree(data / "jobs" / "walk" / "output" / "tree", args.dirs, args.files)
                sides[name] = mnt / "workspaces" / "walk" / "output" / "tree"
            times: dict[tuple[str, str], list[float]] = {}
            for _round in range(args.rounds):
                for walk, argv in WALKS.items():
                    for side, where in sides.items():
                        drop_caches()
                        times.setdefault((walk, side), []).append(timed(argv, where))
    finally:
        shutil.rmtree(native)
    n = args.dirs * args.files
    print(f"{n:,} files in {args.dirs} directories; medians of {args.rounds} rounds, dentry cache dropped each time")
    print("| walk | native | wsfs | × native | wsfs without readdirplus | × native |")
    print("|---|---|---|---|---|---|")
    for walk in WALKS:
        med = {side: statistics.median(times[(walk, side)]) for side in sides}
        plus, names = med["wsfs"], med["wsfs, no readdirplus"]
        print(f"| {walk} | {med['native'] * 1000:.0f} ms | {plus * 1000:.0f} ms | {plus / med['native']:.1f} | "
              f"{names * 1000:.0f} ms | {names / med['native']:.1f} |")


if __name__ == "__main__":
    main()
