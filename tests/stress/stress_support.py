"""Shared by the stress suites (``tests/stress/test_stress_*.py``): sizes, seeds, mounts, checks.

``WSFS_STRESS=full`` selects the full sizes (``make stress``); anything else
the short, seeded version that ``make test`` and CI run.  ``WSFS_SEED=N``
replays a run: every suite prints its seed first, and pytest shows that
output when a test fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys

from conftest import REPO, MountedWsfs

FULL = os.environ.get("WSFS_STRESS", "").lower() == "full"
SHORT_SEED = 20240601  # CI: the same short run every time, unless WSFS_SEED says otherwise


def size(short, full):
    """The short or the full figure, by ``WSFS_STRESS``."""
    return full if FULL else short


def seed() -> int:
    """``WSFS_SEED``, else a fixed seed (short) or a fresh one (full); printed for the replay line."""
    if os.environ.get("WSFS_SEED"):
        value = int(os.environ["WSFS_SEED"])
    elif FULL:
        value = random.SystemRandom().randrange(1, 2**31)
    else:
        value = SHORT_SEED
    print(f"stress seed {value} (replay: WSFS_SEED={value} WSFS_STRESS={'full' if FULL else 'short'})",
          flush=True)
    return value


def replay(seed_value: int) -> str:
    return f"[replay with WSFS_SEED={seed_value} WSFS_STRESS={'full' if FULL else 'short'}]"


class StressMount(MountedWsfs):
    """A ``MountedWsfs`` logging at INFO: a stress run provokes errnos by the thousand, and at
    DEBUG mfusepy logs a traceback for each (``WSFS_STRESS_LOG=debug`` brings them back)."""

    def cli_args(self) -> list[str]:
        args = super().cli_args()
        level = os.environ.get("WSFS_STRESS_LOG", "info")
        return [level if a == "debug" and args[i - 1] == "--log-level" else a for i, a in enumerate(args)]


def start_mount(tmp_path, name: str = "m", **kwargs) -> StressMount:
    from conftest import require_fuse

    require_fuse()
    return StressMount(tmp_path / name, **kwargs).start()


def doctor(m) -> dict:
    """``wsfs doctor --json`` through the mount (the daemon does the work)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), WSFS_MOUNT=str(m.mnt))
    result = subprocess.run([sys.executable, "-m", "wsfs", "doctor", "--json"], capture_output=True, text=True,
                            env=env, timeout=300)
    try:
        report = json.loads(result.stdout)
    except ValueError:
        raise AssertionError(f"wsfs doctor gave no report ({result.returncode}):\n{result.stdout}{result.stderr}") \
            from None
    return report


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_state(job_dir, line: str) -> None:
    """``echo LINE > JOB/.state``: one write; raises the daemon's errno."""
    fd = os.open(os.path.join(job_dir, ".state"), os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def write_control(mnt, line: str) -> None:
    fd = os.open(os.path.join(mnt, ".wsfs", "control"), os.O_WRONLY)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def read_jobs(mnt) -> dict[str, dict]:
    with open(os.path.join(mnt, ".wsfs", "jobs")) as f:
        return {r["id"]: r for r in (json.loads(line) for line in f if line.strip())}


def receipt_problems(job_dir, record: dict | None = None) -> list[str]:
    """What is wrong with an ended job's receipt, read through the mount (empty: nothing).

    The receipt must name the job and its state, list every file of ``output/``
    (the keep area of the default template) with its true size and sha256, and
    match the record's ``receipt_sha256`` and the ``.manifest`` it digests.
    """
    problems = []
    job = os.path.basename(job_dir)
    try:
        with open(os.path.join(job_dir, "receipt.json"), "rb") as f:
            raw = f.read()
    except OSError as exc:
        return [f"{job}: no receipt ({exc.strerror})"]
    try:
        receipt = json.loads(raw)
    except ValueError as exc:
        return [f"{job}: receipt.json is not JSON ({exc})"]
    document = json.loads(open(os.path.join(job_dir, ".job"), "rb").read())
    if receipt.get("job") != job:
        problems.append(f"{job}: receipt names job {receipt.get('job')!r}")
    if receipt.get("state") != document["state"]:
        problems.append(f"{job}: receipt says {receipt.get('state')}, the record {document['state']}")
    if document.get("receipt_sha256") != sha256(raw):
        problems.append(f"{job}: the record's receipt_sha256 does not match receipt.json")
    actual = {}
    out_dir = os.path.join(job_dir, "output")
    for dirpath, _dirs, files in os.walk(out_dir):
        for name in files:
            full = os.path.join(dirpath, name)
            with open(full, "rb") as f:
                data = f.read()
            actual["output/" + os.path.relpath(full, out_dir)] = (len(data), sha256(data))
    listed = {o["path"]: (o["size"], o["sha256"]) for o in receipt.get("outputs", [])}
    if listed != actual:
        wrong = sorted(p for p in listed.keys() | actual.keys() if listed.get(p) != actual.get(p))
        problems.append(f"{job}: receipt outputs differ from output/ at {wrong[:5]}: "
                        f"receipt {[listed.get(p) for p in wrong[:3]]}, files {[actual.get(p) for p in wrong[:3]]}")
    with open(os.path.join(job_dir, ".manifest"), "rb") as f:
        manifest = f.read()
    if receipt.get("manifest_sha256") != sha256(manifest):
        problems.append(f"{job}: receipt's manifest_sha256 does not match .manifest")
    return problems
