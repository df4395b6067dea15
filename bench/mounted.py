"""A throwaway wsfs mount for the small benchmarks (``drop_cost``, ``ending_cost``, ``pressure``).

``mounted(src)`` mounts the wsfs of source tree ``src`` (this repository by default; a ``git
archive`` of another commit to compare) on a fresh mount point and data dir under a temporary
folder, yields ``(mnt, data)``, and unmounts and removes everything in ``finally``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def mounted(src: Path = REPO, *, data: Path | None = None, config: str | None = None, prefix: str = "wsfs-bench-"):
    base = Path(tempfile.mkdtemp(prefix=prefix))
    mnt = base / "mnt"
    mnt.mkdir()
    data = data or base / "data"
    # cwd is the tree too: `python -m` puts the working directory first on sys.path.
    env = dict(os.environ, PYTHONPATH=str(src))
    args = [sys.executable, "-m", "wsfs", "mount", str(mnt), "--data", str(data)]
    if config is not None:
        (base / "wsfs.toml").write_text(config)
        args += ["--config", str(base / "wsfs.toml")]
    subprocess.run(args, env=env, cwd=src, check=True, capture_output=True)
    try:
        yield mnt, data
    finally:
        subprocess.run([sys.executable, "-m", "wsfs", "unmount", str(mnt)], env=env, cwd=src, capture_output=True)
        subprocess.run(["rm", "-rf", str(base)])
