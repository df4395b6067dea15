"""How long ``echo "drop temp" > .state`` takes, by how much temp/ holds (issue 18, eager scratch cleanup).

Mounts wsfs from this tree, fills a running job's temp/ with N files of 4 KiB through the mount,
then times the drop (the ``write()`` to ``.state``), and how long the trash took to delete them
in the background.  A drop swaps the area with an empty one, so its cost should not grow with N.

    .venv/bin/python bench/drop_cost.py --files 1000 10000 50000
"""

from __future__ import annotations

import argparse
import os
import time

from mounted import mounted


def one(files: int) -> tuple[float, float]:
    with mounted(prefix="wsfs-drop-") as (mnt, data):
        job = mnt / "workspaces" / "big"
        os.mkdir(job)
        block = b"x" * 4096
        for i in range(files):
            sub = job / "temp" / f"d{i // 1000}"
            if i % 1000 == 0:
                os.mkdir(sub)
            (sub / f"f{i}").write_bytes(block)
        started = time.perf_counter()
        with open(job / ".state", "w") as f:
            f.write("drop temp\n")
        took = time.perf_counter() - started
        while os.listdir(data / "trash"):
            time.sleep(0.05)
        emptied = time.perf_counter() - started
        return took * 1000, emptied


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, nargs="+", default=[1000, 10000, 50000])
    args = parser.parse_args()
    for files in args.files:
        took, emptied = one(files)
        print(f"temp/ with {files} files of 4 KiB: drop took {took:.1f} ms; the trash was empty {emptied:.1f} s later")


if __name__ == "__main__":
    main()
