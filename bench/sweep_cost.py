#!/usr/bin/env python3
"""What one retention sweep costs, and where it goes (docs/spec.md §4: cost grows with the number due).

    .venv/bin/python bench/sweep_cost.py [--jobs 100000] [--due 1000] [--runs 5] [--dir DIR]

Populates a store with ``--jobs`` failed-job records (``Writer.put_job`` in
batches, no FUSE), ``--due`` of them past their retention, then on a fresh
copy per run times, in-process with a fake clock:

* ``dry``  ``Sweeper.sweep(now, dry_run=True)``: the plan alone (index scan + record reads);
* ``hide`` the real sweep that hides the due jobs, with its store commits counted;
* ``none`` a sweep with nothing due (the periodic pass), median of 20.

Prints each run and the medians.  ``bench/run.py --only 8`` measures the same
hide/purge/none figures inside the full harness.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wsfs.core.config import default_config
from wsfs.core.lifecycle import JobService, open_data_dir
from wsfs.core.retention import Sweeper

NOW = 1_800_000_000.0


def open_core(data: Path) -> JobService:
    return open_data_dir(str(data), default_config(), clock=lambda: NOW)


def close_core(service: JobService) -> None:
    service.manifest.flush()
    service.store.close()
    service.tree.close()


def populate(data: Path, jobs: int, due: int, batch: int = 5000) -> None:
    service = open_core(data)
    template = service.config.template("default")
    step = max(jobs // due, 1) if due else 0
    try:
        for start in range(0, jobs, batch):
            records = []
            for i in range(start, min(jobs, start + batch)):
                ended = NOW - 8 * 86400
                record = service.new_record(f"job-{i:07d}", template, 0, 0, ended - 3600, None, None)
                record.update(state="failed", state_since=ended, ended=ended, sealed=True)
                is_due = due and i % step == 0 and i // step < due
                record.expires_at = NOW - 1 if is_due else NOW + 3600 + i
                records.append(record)

            def fn(w, records=records):
                for record in records:
                    w.put_job(record)
                return []
            service.store.transact(fn)
    finally:
        close_core(service)


def one_run(base: Path, work: Path, run: int, due: int) -> dict:
    copy = work / f"copy-{run}"
    subprocess.run(["cp", "-a", str(base), str(copy)], check=True)
    subprocess.run(["sync"], check=True)
    service = open_core(copy)
    try:
        sweeper = Sweeper(service, open_jobs=lambda: set())
        t0 = time.perf_counter()
        dry = sweeper.sweep(NOW, dry_run=True)
        dry_ms = (time.perf_counter() - t0) * 1000

        commits = [0]
        real_transact = service.store.transact

        def counting(fn, on_commit=None):
            commits[0] += 1
            return real_transact(fn, on_commit)
        service.store.transact = counting
        t0 = time.perf_counter()
        report = sweeper.sweep(NOW)
        hide_ms = (time.perf_counter() - t0) * 1000
        service.store.transact = real_transact
        hidden = sum(1 for a in report.actions if a.action == "hide" and a.done)
        if len(dry.actions) != due or hidden != due:
            raise RuntimeError(f"expected {due} hides, dry run planned {len(dry.actions)}, sweep hid {hidden}")

        nones = []
        for _ in range(20):
            t0 = time.perf_counter()
            sweeper.sweep(NOW, announce=False)
            nones.append((time.perf_counter() - t0) * 1000)
        return {"dry_ms": dry_ms, "hide_ms": hide_ms, "commits": commits[0], "none_ms": statistics.median(nones)}
    finally:
        close_core(service)
        shutil.rmtree(copy)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--due", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", default=None, help="work dir (on the filesystem to measure; default: a tmp dir)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wsfs-sweep-", dir=args.dir))
    try:
        base = work / "base"
        t0 = time.perf_counter()
        populate(base, args.jobs, args.due)
        print(f"populated {args.jobs:,} records ({args.due:,} due) in {time.perf_counter() - t0:.1f}s", flush=True)
        runs = []
        for run in range(args.runs):
            sample = one_run(base, work, run, args.due)
            runs.append(sample)
            print(f"run {run}: dry-run {sample['dry_ms']:.1f} ms, hide {sample['hide_ms']:.0f} ms "
                  f"({sample['commits']} commits, {sample['hide_ms'] / args.due:.2f} ms per due job), "
                  f"none due {sample['none_ms']:.3f} ms", flush=True)
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"median of {args.runs}: dry-run {med['dry_ms']:.1f} ms, hide {med['hide_ms']:.0f} ms "
              f"({med['commits']:.0f} commits), none due {med['none_ms']:.3f} ms")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
