"""Per-job overhead of the Slurm scripts (README "Running on a cluster"), on a one-node Slurm.

Starts munged, slurmctld and slurmd and a wsfs mount as tests/mount/test_slurm_mount.py does (its
``Cluster``), submits N small jobs one after another (sequential: each finishes before the next
is submitted) and prints the median wall time of the prolog, task-prolog and epilog.  Needs root,
``slurm-wlm`` and ``munge`` (``make test`` installs them).

    .venv/bin/python bench/slurm_overhead.py [--jobs 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

# conftest's helpers, and the cluster of the Slurm tests
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "mount"))

from test_slurm_mount import Cluster


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20)
    args = parser.parse_args()
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="wsfs-slurm-bench-")))
    cluster.start()
    try:
        for _ in range(args.jobs):
            job = cluster.sbatch("--wrap", 'echo x > "$WSFS_OUTPUT/x"')
            cluster.wait_done(job)
            time.sleep(0.3)
        print(f"{args.jobs} sequential jobs, median wall time: {cluster.overhead()}")
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
