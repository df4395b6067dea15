"""The Slurm integration (slurm/prolog, task-prolog, epilog) against a real Slurm and a real mount.

One node on this machine: munged, slurmctld and slurmd run as plain root daemons (no systemd),
with a slurm.conf made here whose Prolog, TaskProlog and Epilog are the shipped scripts (through
wrappers that point them at this test's mount and settings).  Jobs are submitted with sbatch,
as users do, and every outcome is checked on the workspace: success, exit 3, a signal, scancel,
the time limit, an array of 10, a requeue, a job that ends its own workspace, a wsfs restart
while a job starts (the node is not drained), and a lost epilog (slurmd killed: the lease ends
the workspace).  Without slurmd (``apt-get install slurm-wlm munge``; make test does) the module
skips, or fails under WSFS_REQUIRE_FUSE=1 (CI).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from conftest import REPO, MountedWsfs, require_fuse

pytestmark = pytest.mark.mount

SLURM_CONF = """\
ClusterName=wsfs-test
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
MpiDefault=none
ReturnToService=2
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
SlurmdParameters=config_overrides
Prolog={dir}/prolog
TaskProlog={dir}/task-prolog
Epilog={dir}/epilog
PrologFlags=Alloc
JobRequeue=1
KillWait=2
OverTimeLimit=0
MinJobAge=600
InactiveLimit=0
DefMemPerCPU=10
NodeName={host} CPUs=12 RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """One Slurm node and one wsfs mount, for the module."""

    def __init__(self, base: Path):
        self.dir = base / "slurm"
        self.settings = self.dir / "wsfs-slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.dir / "slurm.conf"))
        self.mount = MountedWsfs(base / "wsfs", allow_other=True)

    def start(self) -> None:
        for sub in ("state", "spool", "work"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "work").chmod(0o777)
        self.mount.start()
        host = socket.gethostname().split(".")[0]
        (self.dir / "slurm.conf").write_text(SLURM_CONF.format(host=host, dir=self.dir, ctld_port=_free_port(),
                                                               d_port=_free_port()))
        self.settings.write_text("WSFS_SLURM_WAIT=30\nWSFS_SLURM_LEASE=1h\n")
        for name in ("prolog", "task-prolog", "epilog"):  # the shipped scripts, pointed at this mount, timed
            wrapper = self.dir / name
            wrapper.write_text(f"#!/bin/sh\nexport WSFS_MOUNT={self.mount.mnt} WSFS_SLURM_CONF={self.settings}\n"
                               f"start=$(date +%s%N)\n{REPO / 'slurm' / name} \"$@\"\nrc=$?\n"
                               f"echo \"{name} $(( ($(date +%s%N) - start) / 1000 ))\" >> {self.dir}/timings\n"
                               "exit $rc\n")
            wrapper.chmod(0o755)
        self._munge()
        subprocess.run(["slurmctld", "-i"], env=self.env, check=True)
        self.start_slurmd()
        self.wait(lambda: "idle" in self.sinfo(), 60, "the node to be idle")

    def _munge(self) -> None:
        """munged, started here unless one runs already (then it is left as it was found)."""
        self.munged: set[int] = set()
        if subprocess.run(["sh", "-c", "munge -n | unmunge"], capture_output=True).returncode == 0:
            return
        before = {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "munged"}
        os.makedirs("/run/munge", exist_ok=True)
        if not os.path.exists("/etc/munge/munge.key"):
            subprocess.run(["mungekey", "--create"], check=True)  # the package makes one; a bare image may not
        for path in ("/run/munge", "/var/log/munge", "/var/lib/munge", "/etc/munge"):
            if os.path.exists(path):
                shutil.chown(path, "munge", "munge")
                for root, dirs, files in os.walk(path):
                    for name in dirs + files:
                        shutil.chown(os.path.join(root, name), "munge", "munge")
        subprocess.run(["runuser", "-u", "munge", "--", "munged"], check=True)
        self.wait(lambda: subprocess.run(["sh", "-c", "munge -n | unmunge"], capture_output=True).returncode == 0,
                  10, "munged")
        self.munged = {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "munged"} - before

    def start_slurmd(self) -> None:
        subprocess.run(["slurmd"], env=self.env, check=True)

    def overhead(self) -> str:
        """Median milliseconds of each script over the module's jobs (README "Running on a cluster")."""
        import statistics

        runs: dict[str, list[float]] = {}
        try:
            for line in (self.dir / "timings").read_text().splitlines():
                name, micros = line.split()
                runs.setdefault(name, []).append(int(micros) / 1000)
        except (OSError, ValueError):
            return "no timings"
        parts = [f"{n} {statistics.median(v):.1f} ms (n={len(v)})" for n, v in sorted(runs.items())]
        total = sum(statistics.median(v) for v in runs.values())
        return ", ".join(parts) + f"; per job {total:.1f} ms"

    def stop(self) -> None:
        for name in ("slurmd", "slurmctld"):
            pid_file = self.dir / f"{name}.pid"
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        # A job's slurmstepd outlives a killed slurmd (the lost-epilog test): this cluster's, by
        # their working dir (its spool), go too, or they stay behind after the run.
        for proc in psutil.process_iter(["name", "cwd"]):
            if (proc.info["name"] or "").startswith("slurmstepd") and \
                    (proc.info["cwd"] or "").startswith(str(self.dir)):
                with contextlib.suppress(psutil.Error):
                    proc.kill()
        for pid in getattr(self, "munged", ()):  # the munged this cluster started goes with it
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        self.mount.stop()

    def sinfo(self) -> str:
        return subprocess.run(["sinfo", "-h", "-o", "%T"], env=self.env, capture_output=True, text=True).stdout

    def sbatch(self, *args: str) -> str:
        result = subprocess.run(["sbatch", "--parsable", "-D", str(self.dir / "work"), "-o", "/dev/null", *args],
                                env=self.env, capture_output=True, text=True, check=True)
        return result.stdout.strip().split(";")[0]

    def scontrol(self, *args: str) -> str:
        return subprocess.run(["scontrol", *args], env=self.env, capture_output=True, text=True).stdout

    def job_state(self, job: str) -> str:
        out = self.scontrol("show", "job", "-o", job)
        return next((f.split("=", 1)[1] for f in out.split() if f.startswith("JobState=")), "GONE")

    def wait(self, condition, seconds: float, what: str) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {seconds}s waiting for {what}\n{self.logs()}")
            time.sleep(0.25)

    def wait_done(self, job: str, seconds: float = 60) -> None:
        self.wait(lambda: self.job_state(job) not in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING"),
                  seconds, f"slurm job {job} to finish")

    def workspace(self, name: str) -> dict | None:
        for top in ("workspaces", "quarantine"):
            path = self.mount.mnt / top / name / ".job"
            if path.exists():
                return json.loads(path.read_text())
        records = [json.loads(line) for line in (self.mount.mnt / ".wsfs" / "jobs").read_text().splitlines()]
        return next((r for r in records if r["id"] == name), None)

    def logs(self) -> str:
        out = []
        for name in ("slurmd.log", "slurmctld.log"):
            try:
                out.append(f"--- {name}\n" + "\n".join((self.dir / name).read_text().splitlines()[-15:]))
            except OSError:
                pass
        return "\n".join(out)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    require_fuse()
    missing = [tool for tool in ("slurmctld", "slurmd", "sbatch", "munged") if shutil.which(tool) is None]
    if missing:
        if os.environ.get("WSFS_REQUIRE_FUSE") == "1":
            pytest.fail(f"WSFS_REQUIRE_FUSE=1 but {', '.join(missing)} missing (make test installs slurm-wlm, munge)")
        pytest.skip(f"no Slurm here ({', '.join(missing)} missing): apt-get install slurm-wlm munge")
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.start()
        yield c
    finally:
        print(f"\nwsfs Slurm scripts, median wall time: {c.overhead()}")
        c.stop()


def ended(c: Cluster, name: str, seconds: float = 30) -> dict:
    c.wait(lambda: (c.workspace(name) or {}).get("state") not in (None, "running"), seconds, f"{name} to end")
    return c.workspace(name)


def test_a_job_that_succeeds_completes_its_workspace(cluster):
    c = cluster
    job = c.sbatch("-J", "my sim", "--wrap",
                   'echo "$WSFS_JOB" > "$WSFS_OUTPUT/result"; head -c 1000 /dev/zero > "$WSFS_TEMP/scratch"')
    c.wait_done(job)
    record = ended(c, f"slurm-{job}")
    assert (record["state"], record["reason"]) == ("completed", None)
    assert record["labels"]["slurm_job"] == job and record["labels"]["partition"] == "debug"
    assert record["labels"]["name"] == "my sim" and record["labels"]["user"] == "root"
    ws = c.mount.ws / f"slurm-{job}"
    assert (ws / "output" / "result").read_text() == f"slurm-{job}\n"
    assert not (ws / "temp").exists()
    assert [o["path"] for o in json.loads((ws / "receipt.json").read_text())["outputs"]] == ["output/result"]


@pytest.mark.parametrize("script, state, reason", [
    ("exit 3", "failed", "exit status 3"),
    ("kill -9 $$", "failed", "killed by signal 9"),
    ('echo "failed by itself" > "$WSFS_WORKSPACE/.state"; exit 0', "failed", "by itself"),
])
def test_failures_and_a_job_that_ends_its_own_workspace(cluster, script, state, reason):
    c = cluster
    job = c.sbatch("--wrap", script)
    c.wait_done(job)
    record = ended(c, f"slurm-{job}")
    assert (record["state"], record["reason"]) == (state, reason)


def test_scancel_and_the_time_limit_cancel_the_workspace(cluster):
    c = cluster
    limited = c.sbatch("--time=1", "--wrap", "sleep 300")
    running = c.sbatch("--wrap", "sleep 300")
    c.wait(lambda: c.job_state(running) == "RUNNING", 30, "the job to run")
    time.sleep(1)
    subprocess.run(["scancel", running], env=c.env, check=True)
    c.wait_done(running)
    assert (ended(c, f"slurm-{running}")["state"], c.workspace(f"slurm-{running}")["reason"]) == ("cancelled",
                                                                                                  "scancel")
    c.wait_done(limited, 150)
    record = ended(c, f"slurm-{limited}")
    assert (record["state"], record["reason"]) == ("cancelled", "time limit")


def test_each_task_of_an_array_gets_its_own_workspace(cluster):
    c = cluster
    array = c.sbatch("--array=0-9", "--wrap", 'echo "$SLURM_ARRAY_TASK_ID $WSFS_JOB" > "$WSFS_OUTPUT/task"')
    for task in range(10):
        name = f"slurm-{array}_{task}"
        record = ended(c, name, 90)
        assert record["state"] == "completed", (name, record)
        assert (c.mount.ws / name / "output" / "task").read_text() == f"{task} {name}\n"


def test_a_requeued_job_carries_on_in_its_workspace_and_is_not_completed_in_between(cluster):
    c = cluster
    job = c.sbatch("--requeue", "--wrap", 'echo attempt > "$WSFS_OUTPUT/attempt-${SLURM_RESTART_COUNT:-0}"; '
                                          '[ "${SLURM_RESTART_COUNT:-0}" -gt 0 ] || sleep 300')
    name = f"slurm-{job}"
    c.wait(lambda: (c.mount.ws / name / "output" / "attempt-0").exists(), 30, "the first attempt")
    assert c.scontrol("requeue", job) == ""
    # Slurm holds a requeued job back (BeginTime, about two minutes): let it go now.
    c.wait(lambda: c.job_state(job) == "PENDING", 30, "the job to be pending again")
    c.scontrol("update", f"JobId={job}", "StartTime=now")
    c.wait_done(job, 90)
    record = ended(c, name)
    assert record["state"] == "completed" and record["labels"]["slurm_attempt"] == "1"
    assert sorted(os.listdir(c.mount.ws / name / "output")) == ["attempt-0", "attempt-1"]
    transitions = [json.loads(line) for line in (c.mount.mnt / ".wsfs" / "events").read_text().splitlines()]
    assert [e["to"] for e in transitions if e.get("job") == name and e["kind"] == "transition"] == ["completed"]


def test_a_wsfs_restart_while_a_job_starts_does_not_drain_the_node(cluster):
    c = cluster
    c.mount.stop()
    job = c.sbatch("--wrap", 'echo ok > "$WSFS_OUTPUT/ok"')
    time.sleep(2)  # the prolog is waiting for the mount meanwhile
    c.mount.start()
    c.wait_done(job)
    record = ended(c, f"slurm-{job}")
    assert record["state"] == "completed"
    assert "drain" not in c.sinfo()


def test_a_lost_epilog_is_ended_by_the_lease(cluster):
    """slurmd killed while the job runs: its epilog never comes; the lease crashes the workspace."""
    c = cluster
    c.settings.write_text("WSFS_SLURM_WAIT=30\nWSFS_SLURM_LEASE=3s\n")
    try:
        job = c.sbatch("--wrap", "sleep 300")
        name = f"slurm-{job}"
        c.wait(lambda: c.job_state(job) == "RUNNING" and c.workspace(name) is not None, 30, "the job to run")
        os.kill(int((c.dir / "slurmd.pid").read_text()), signal.SIGKILL)
        time.sleep(3.5)
        (c.mount.mnt / ".wsfs" / "control").write_text("sweep\n")
        record = c.workspace(name)
        assert (record["state"], record["reason"]) == ("crashed", "lease expired")
        assert (c.mount.mnt / "quarantine" / name).is_dir()
    finally:
        c.settings.write_text("WSFS_SLURM_WAIT=30\nWSFS_SLURM_LEASE=1h\n")
        subprocess.run(["pkill", "-f", "sleep 300"], capture_output=True)
