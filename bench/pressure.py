"""Does wsfs hold ``min_free`` while a writer fills its disk?  (issue 18, cleanup under disk pressure)

Mounts wsfs on a tmpfs data disk of ``--disk`` MiB with ``min_free`` ``--min-free`` MiB and
``pressure = ["hidden", "cancelled", "failed", "completed"]``, ``pressure_min_age = "0s"``.  A
writer makes jobs one after another, writes ``--job`` MiB into each (1 MiB writes) and ends it
(two failed, one completed), until it has written ``--total`` MiB.  A sampler reads the disk's
free space every 10 ms.  Reported: the lowest free space seen, how many samples were below
min_free and below min_free less one job, the writer's errors (ENOSPC, EDQUOT), and the early
purges.  Root only (it mounts a tmpfs).

    .venv/bin/python bench/pressure.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from mounted import mounted

MIB = 1 << 20


def free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(mnt: Path, disk: Path, args) -> tuple[list[dict], list[int], dict[str, int], float]:
    """The writer, with the sampler beside it; returns the events, the free-space samples, the
    writer's errors by name and how long it took."""
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(free(disk))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    errors: dict[str, int] = {}
    block = os.urandom(MIB)
    started = time.perf_counter()
    try:
        for i in range(args.total // args.job):
            job = mnt / "workspaces" / f"job{i:04d}"
            try:
                os.mkdir(job)
                with open(job / "output" / "data", "wb") as f:
                    for _ in range(args.job):
                        f.write(block)
                (job / ".state").write_text("completed\n" if i % 3 == 0 else "failed\n")
            except OSError as exc:
                name = os.strerror(exc.errno or 0)
                errors[name] = errors.get(name, 0) + 1
    finally:
        done.set()
        sampler.join()
    took = time.perf_counter() - started
    events = [json.loads(line) for line in (mnt / ".wsfs" / "events").read_text().splitlines()]
    return events, samples, errors, took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--disk", type=int, default=1024, help="tmpfs size, MiB")
    parser.add_argument("--min-free", type=int, default=256, help="min_free, MiB")
    parser.add_argument("--job", type=int, default=64, help="MiB written per job")
    parser.add_argument("--total", type=int, default=4096, help="MiB written in all")
    args = parser.parse_args()
    disk = Path(tempfile.mkdtemp(prefix="wsfs-pressure-disk-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={args.disk}M", "tmpfs", str(disk)], check=True)
    config = (f'min_free = "{args.min_free}M"\npressure = ["hidden", "cancelled", "failed", "completed"]\n'
              'pressure_min_age = "0s"\n')
    try:
        with mounted(data=disk / "data", config=config, prefix="wsfs-pressure-") as (mnt, _data):
            events, samples, errors, took = fill(mnt, disk, args)
    finally:
        subprocess.run(["umount", str(disk)])
        os.rmdir(disk)
    purges = [e for e in events if e["kind"] == "purged" and e.get("reason") == "disk pressure"]
    need = args.min_free * MIB
    print(f"disk {args.disk} MiB, min_free {args.min_free} MiB, {args.total // args.job} jobs of {args.job} MiB "
          f"({args.total} MiB written in {took:.1f} s, {args.total / took:.0f} MiB/s)")
    print(f"lowest free: {min(samples) / MIB:.0f} MiB; samples below min_free: "
          f"{sum(s < need for s in samples)}/{len(samples)}; below min_free less one job: "
          f"{sum(s < need - args.job * MIB for s in samples)}")
    print(f"writer errors: {errors or 'none'}; early purges: {len(purges)}")


if __name__ == "__main__":
    main()
