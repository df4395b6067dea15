"""How long ``echo completed > .state`` takes after outputs written out of order (issue 16, goal 4).

Mounts wsfs from a source tree, writes one output either back to front (1 MiB at a time) or
by ``fallocate`` and a single write, closes it, waits ``--wait`` seconds ("long ago"), then
times the ending.  Run it for two trees to compare, e.g. a ``git archive`` of an older commit:

    git archive c8b1922 | (mkdir -p /tmp/before && tar -x -C /tmp/before)
    .venv/bin/python bench/ending_cost.py --src /tmp/before
    .venv/bin/python bench/ending_cost.py
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from mounted import REPO, mounted


def one(src: Path, how: str, mib: int, wait: float) -> float:
    with mounted(src, prefix="wsfs-ending-") as (mnt, _data):
        os.mkdir(mnt / "workspaces" / "big")
        fd = os.open(mnt / "workspaces" / "big" / "output" / "out", os.O_CREAT | os.O_WRONLY, 0o644)
        try:
            if how == "reversed":
                block = os.urandom(1 << 20)
                for i in reversed(range(mib)):
                    os.pwrite(fd, block, i << 20)
            else:
                os.posix_fallocate(fd, 0, mib << 20)
                os.pwrite(fd, b"x" * 4096, (mib // 2) << 20)
        finally:
            os.close(fd)
        time.sleep(wait)
        started = time.perf_counter()
        with open(mnt / "workspaces" / "big" / ".state", "w") as f:
            f.write("completed\n")
        return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, default=REPO, help="the source tree to mount (default: this one)")
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--wait", type=float, default=8.0)
    args = parser.parse_args()
    for how in ("reversed", "fallocate"):
        took = one(args.src.resolve(), how, args.mib, args.wait)
        print(f"{args.src}: {args.mib} MiB output ({how}), echo completed {args.wait:g} s later: {took:.0f} ms")


if __name__ == "__main__":
    main()
