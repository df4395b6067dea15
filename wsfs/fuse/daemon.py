"""Mounting: checks, the daemon's threads, sd_notify, ordered shutdown (docs/spec.md §7, §11).

``mount`` checks the mount point and the data dir, then either serves in the
foreground (``serve``) or starts ``wsfs mount --foreground`` as a detached
child and returns once the mount answers.

``serve`` order: lock the data dir -> open the store -> recover -> start the
worker threads -> FUSE loop (libfuse handles SIGTERM/SIGINT: it leaves the
loop and unmounts) -> stop the threads -> flush -> mark the store clean.
A crash skips the last steps on purpose: the store stays ``live``, the next
mount sees it and recovers, and the mount point is never unmounted under a
job that is still writing (an empty mount point invites writes to the wrong
disk).

systemd (``Type=notify``, docs/spec.md §11): one datagram each to ``$NOTIFY_SOCKET``.
``READY=1`` once a stat through the mount answers, then ``STATUS=`` (job
counts and usage) whenever it changes, from the ``wsfs-ready`` thread;
``STOPPING=1`` as soon as the FUSE loop has returned (libfuse owns SIGTERM,
so that is the first moment Python knows), then a last ``STATUS=``.

Threads: libfuse's workers call the operations; ``wsfs-manifest``,
``wsfs-hasher``, ``wsfs-trash``, ``wsfs-sweeper``, ``wsfs-publisher`` (publishing
and hooks, wsfs.publish; at shutdown it kills a running hook, which the next
mount runs again) and ``wsfs-ready`` are
ours, all daemon threads looping on ``stop``.  At shutdown the sweeper
finishes the action in flight and starts no other; the store is marked
clean only when every thread has stopped.  ``doctor`` runs on the FUSE
thread that took the control write, one at a time (``_doctor_lock``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from .. import __version__
from ..client.mounts import FSNAME, MountError
from ..core.config import Config
from ..core.errors import StoreError
from ..core.hashing import Hasher
from ..core.lifecycle import JobService, open_data_dir
from ..core.model import JobState
from ..core.publish import Publisher
from ..core.retention import Sweeper
from ..core.store import Store
from ..core.tree import Tree
from ..core.units import format_size

log = logging.getLogger("wsfs.daemon")

LOG_FILE = "wsfs.log"
LOCK_FILE = "lock"
READY_TIMEOUT = 30.0
# Out of these, a background thread waits and starts again instead of stopping the mount.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOSPC, errno.EDQUOT})
MAX_THREADS = 16  # libfuse's worker threads; the GIL makes more of them useless
# How long a thread holding the GIL runs before one waiting for it gets a turn (Python's default
# is 5 ms): short requests (a `.state` read) must not queue behind a busy writer thread for that long.
GIL_SWITCH_INTERVAL_S = 0.0005
STATUS_INTERVAL = 2.0  # how often systemd's STATUS= line is refreshed (only sent when it changed)
JOIN_TIMEOUT = 60.0  # a worker still busy after this at shutdown leaves the store "live" (recovered next mount)
STORE_RETRY = 5.0  # a worker thread whose commit the store refused (disk full) starts again after this


def mount_entry(mountpoint: str) -> tuple[str, str] | None:
    """(fstype, source) of the mount at ``mountpoint`` from /proc/mounts, or None."""
    target = os.path.abspath(mountpoint)
    found = None
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 3 and fields[1].replace("\\040", " ") == target:
                found = (fields[2], fields[0])  # the last one listed is on top
    return found


READ_AHEAD_KB = 1024  # = max_write: a sequential read reaches the daemon in 1 MiB requests


def tune_readahead(mountpoint: str) -> None:
    """Raise the mount's readahead from the kernel's 128 KiB to ``READ_AHEAD_KB``.

    FUSE sends a sequential read in requests as big as the readahead window, whatever
    ``max_readahead`` init asked for: 128 KiB makes 8 requests, 8 Python calls, of each MiB.
    The knob is the mount's backing device info in sysfs (root only); the device number comes
    from /proc/self/mountinfo, so no thread of ours stats its own mount.
    """
    device = mount_device(mountpoint)
    try:
        if device is not None:
            with open(f"/sys/class/bdi/{device}/read_ahead_kb", "w") as f:
                f.write(f"{READ_AHEAD_KB}\n")
    except OSError as exc:
        log.debug("readahead of %s stays the kernel's: %s", mountpoint, exc)


def mount_device(mountpoint: str) -> str | None:
    """``MAJOR:MINOR`` of the wsfs mount at ``mountpoint`` (the one on top), from mountinfo."""
    target = os.path.abspath(mountpoint)
    device = None
    with contextlib.suppress(OSError):
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and fields[4].replace("\\040", " ") == target \
                        and f" - fuse.{FSNAME} " in line:
                    device = fields[2]  # the last one listed is on top
    return device


def is_wsfs_mount(mountpoint: str) -> bool:
    entry = mount_entry(mountpoint)
    return entry is not None and entry[0] == f"fuse.{FSNAME}"


def fusermount(mountpoint: str, *, lazy: bool = False) -> subprocess.CompletedProcess:
    args = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [mountpoint]
    return subprocess.run(args, capture_output=True, text=True)


def probe_mount(mountpoint: str) -> str | None:
    """``"alive"``, ``"stale"`` (its daemon is gone) or None when nothing is mounted there.

    statfs is always answered by the daemon (the kernel caches no statfs),
    so unlike stat it tells a dead mount at once.
    """
    if mount_entry(mountpoint) is None:
        return None
    try:
        os.statvfs(mountpoint)
    except OSError as exc:
        if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED):
            return "stale"
        raise
    return "alive"


def check_mountpoint(mountpoint: str) -> None:
    """Refuse a mount point we must not use; clear a stale one left by a killed daemon."""
    # Probe first: once the kernel's cached attributes expire, a stale mount point's own lstat
    # fails (ENOTCONN), so lexists() would call it missing (docs/spec.md §7: mount over it must work).
    state = probe_mount(mountpoint)
    if state == "stale":
        log.warning("clearing the stale mount at %s (its daemon is gone)", mountpoint)
        result = fusermount(mountpoint, lazy=True)
        if result.returncode != 0:
            raise MountError(f"cannot clear the stale mount at {mountpoint}: {result.stderr.strip()}")
    elif state == "alive":
        if is_wsfs_mount(mountpoint):
            raise MountError(f"{mountpoint} is already a wsfs mount (wsfs unmount {mountpoint} first)")
        raise MountError(f"{mountpoint} is already a mount point ({(mount_entry(mountpoint) or ('?',))[0]})")
    if not os.path.lexists(mountpoint):
        raise MountError(f"mount point {mountpoint} does not exist (mkdir it first)")
    if not os.path.isdir(mountpoint):
        raise MountError(f"mount point {mountpoint} is not a directory")
    if os.listdir(mountpoint):
        raise MountError(f"mount point {mountpoint} is not empty")


def check_data_dir(data_dir: str) -> None:
    try:
        os.makedirs(data_dir, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise MountError(f"data dir {data_dir} cannot be created: {exc.strerror}") from None
    if not os.path.isdir(data_dir):
        raise MountError(f"data dir {data_dir} is not a directory")
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise MountError(f"data dir {data_dir} is not writable")


def lock_data_dir(data_dir: str) -> int:
    """An exclusive lock for this daemon's life: one daemon per data dir."""
    fd = os.open(os.path.join(data_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise MountError(f"data dir {data_dir} is in use by another wsfs daemon (pid {holder})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def sd_notify(message: str) -> None:
    """One datagram to $NOTIFY_SOCKET (systemd's protocol; no libsystemd needed)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), address)
    except OSError as exc:
        log.warning("sd_notify(%s) failed: %s", message.split("=")[0], exc)


class Daemon:
    """One mounted data dir: the store, the service, the worker threads."""

    def __init__(self, mountpoint: str, data_dir: str, config: Config, config_file: str | None = None):
        self.mountpoint = os.path.abspath(mountpoint)
        self.data_dir = os.path.abspath(data_dir)
        self.config = config
        self.config_file = config_file
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.started = time.time()
        self.store: Store  # made by open(), as the rest below
        self.service: JobService
        self.tree: Tree
        self.sweeper: Sweeper
        self.publisher: Publisher
        self.hasher: Hasher | None = None  # the FUSE layer's (set by serve)
        # jobs with files open through the mount (set by serve)
        self.open_jobs: Callable[[], set[str]] = lambda: set()
        # "on", "reads" (writes come to the daemon) or "off": set by the FUSE layer (issue 16)
        self.passthrough: Callable[[], str] = lambda: "off"
        self._trash_lock = threading.Lock()  # the trash thread and `doctor` empty the trash one at a time
        self._doctor_lock = threading.Lock()

    def open(self) -> None:
        self.service = open_data_dir(self.data_dir, self.config)
        self.store, self.tree = self.service.store, self.service.tree
        with self.store.read() as r:
            previous = r.meta("mount", {})
        unclean = previous.get("state") == "live"
        if unclean:
            log.warning("the previous mount (pid %s) did not end cleanly: recovering", previous.get("pid"))
        with self.store.write() as w:
            w.put_meta("mount", {"state": "live", "pid": os.getpid(), "since": time.time(),
                                 "mountpoint": self.mountpoint})
            if unclean:
                w.add_event("recovered", None, pid=previous.get("pid"))
        self.sweeper = Sweeper(self.service, mountpoint=self.mountpoint, empty_trash=self.empty_trash)
        self.service.space_short = self.sweeper.relieve_now
        self.publisher = Publisher(self.service, time.time, mountpoint=self.mountpoint)
        finished = self.service.recovery.recover(unclean)
        if finished:
            log.warning("finished %d interrupted transition(s): %s", len(finished), ", ".join(finished))

    def metrics_state(self) -> dict:
        """What ``.wsfs/metrics`` reads when scraped (wsfs.metrics.StateCollector)."""
        self.service.manifest.flush()
        by_template: dict[tuple[str, str], list[int]] = {}
        by_user = {uid: [u["bytes"], u["files"], u["jobs"]] for uid, u in self.service.usage.users().items()}
        with self.store.read() as r:
            totals = r.totals()
            publish_queue = len(r.publish_queue())
            for record in r.jobs():
                if not record.where:
                    continue
                usage = record.usage
                mine = by_template.setdefault((record.state, record.template), [0, 0])
                mine[0] += usage["bytes"]
                mine[1] += usage["files"]
        hasher = self.hasher
        return {"jobs": totals["states"], "by_template": by_template, "by_user": by_user,
                "trash_entries": len(self.tree.listdir("trash", "")), "publish_queue": publish_queue,
                "hash_backlog": hasher.backlog() if hasher is not None else 0}

    def start_threads(self) -> None:
        from ..core import metrics  # prometheus_client: the daemon's, never the client's

        metrics.serve_state(self.metrics_state)
        if self.config.metrics_listen:
            metrics.listen(self.config.metrics_listen)
            log.info("metrics on http://%s/metrics", self.config.metrics_listen)
        self._thread("wsfs-manifest", lambda: self.service.manifest.run(self.stop))
        hasher = self.hasher
        if hasher is not None:  # a daemon that serves a mount has the FUSE layer's
            self._thread("wsfs-hasher", lambda: hasher.run(self.stop))
        self._thread("wsfs-trash", self._empty_trash_loop)
        self._thread("wsfs-sweeper", lambda: self.sweeper.run(self.stop, self.config.sweep_interval))
        self._thread("wsfs-publisher", lambda: self.publisher.run(self.stop))
        self._thread("wsfs-ready", self._announce_ready)

    def _thread(self, name: str, target) -> None:
        def run():
            while True:
                try:
                    target()
                    return
                except (StoreError, OSError) as exc:
                    # The store refused a commit (its filesystem is full), or the system is out of
                    # something (descriptors, memory, space): no crash, and no reason to take the
                    # mount away from every job.  The loop starts again; what a stop leaves
                    # undone, the next mount recovers.
                    if isinstance(exc, OSError) and exc.errno not in RESOURCE_ERRNOS:
                        log.exception("thread %s crashed; stopping the mount", name)
                        os.kill(os.getpid(), 15)
                        return
                    if self.stop.is_set():
                        log.warning("thread %s stopped with work not stored: %s", name, exc)
                        return
                    log.warning("thread %s: %s; starting it again in %.0fs", name, exc, STORE_RETRY)
                    if self.stop.wait(STORE_RETRY):
                        return
                except Exception:
                    # A dead worker must not go unnoticed: stop the mount (STYLE: s3ql's hook).
                    log.exception("thread %s crashed; stopping the mount", name)
                    os.kill(os.getpid(), 15)
                    return
        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def _announce_ready(self) -> None:
        """The ``wsfs-ready`` thread: READY=1 once the mount answers, then STATUS= while it runs.

        READY=1 goes out only after a stat through the mount itself succeeded,
        so a unit ordered ``After=wsfs.service`` finds the mount usable.
        """
        deadline = time.monotonic() + READY_TIMEOUT
        while not self.stop.is_set() and time.monotonic() < deadline:
            if is_wsfs_mount(self.mountpoint):
                # The stat runs in a child: a thread of ours waiting on our own mount would make a
                # SIGKILLed daemon unkillable (the kernel waits, uninterruptibly, for an answer no
                # thread is left to give), holding the data dir and the mount point forever.
                try:
                    probe = subprocess.run(["stat", os.path.join(self.mountpoint, ".wsfs", "status")],
                                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL)
                except OSError as exc:  # no child now (out of descriptors or processes): try again
                    log.warning("cannot probe the mount yet: %s", exc)
                    probe = None
                if probe is not None and probe.returncode == 0:
                    tune_readahead(self.mountpoint)
                    self.publisher.mount_ready.set()  # hooks run in the workspace, through the mount
                    log.info("wsfs %s mounted %s on %s", __version__, self.data_dir, self.mountpoint)
                    line = self.status_line()
                    sd_notify(f"READY=1\nSTATUS={line}")
                    if os.environ.get("NOTIFY_SOCKET"):
                        self._status_loop(line)
                    return
            self.stop.wait(0.05)

    def _status_loop(self, sent: str) -> None:
        """Refresh systemd's STATUS= (``systemctl status`` shows it) when the numbers change."""
        while not self.stop.wait(STATUS_INTERVAL):
            line = self.status_line()
            if line != sent:
                sd_notify(f"STATUS={line}")
                sent = line

    def status_line(self) -> str:
        """``2 running, 1 completed; 1.5M in 12 files``: one line for systemd's STATUS=."""
        with self.store.read() as r:
            totals = r.totals()
        order = [s.value for s in JobState]
        counts = sorted(totals["states"].items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99)
        jobs = ", ".join(f"{n} {s}" for s, n in counts) or "no jobs"
        return f"{jobs}; {format_size(totals['bytes'])} in {totals['files']} files"

    def _empty_trash_loop(self) -> None:
        while not self.stop.is_set():
            self.empty_trash()
            self.service.trash_wake.wait(30.0)
            self.service.trash_wake.clear()

    def empty_trash(self, stuck: set | None = None) -> int:
        """Delete everything in the trash; return the entries removed.  Stops early when wsfs stops.

        ``stuck`` collects the names of entries that could not be deleted (for ``doctor``).
        """
        with self._trash_lock:
            names = self.tree.listdir("trash", "")
            failures = 0
            for name in names:
                if self.stop.is_set():
                    break  # the rest is deleted by the next mount

                def report(path, exc):
                    log.error("could not remove %s from the trash: %s", path, exc)
                failed = self.tree.remove_tree("trash", name, on_error=report)
                if failed and stuck is not None:
                    stuck.add(name)
                failures += failed
            if failures:
                with self.store.write() as w:
                    w.bump_counter("failed_removals", failures)
            return len(names)

    def status(self) -> dict:
        from . import binding  # loaded by now: the daemon serves through it

        self.service.manifest.flush()
        with self.store.read() as r:
            totals = r.totals()
            counters = r.meta("counters", {})
        counts, used_bytes, used_files = totals["states"], totals["bytes"], totals["files"]
        st = self.tree.statvfs()
        return {
            "version": __version__, "pid": os.getpid(), "mountpoint": self.mountpoint,
            # the FUSE side (issue 16): which libfuse serves the mount, and which of its levers are on
            "fuse": {"libfuse": binding.libfuse_version(), "passthrough": self.passthrough(),
                     "readdirplus": binding.READDIRPLUS, "posix_acl": self.service.acls_enforced},
            "data_dir": self.data_dir, "uptime_s": round(time.time() - self.started, 1),
            "jobs": counts, "used": {"bytes": used_bytes, "files": used_files},
            "free_bytes": st.f_bavail * st.f_frsize, "total_bytes": st.f_blocks * st.f_frsize,
            "trash_entries": len(self.tree.listdir("trash", "")),
            "counters": {"rejected_writes": 0, "failed_removals": 0, **counters},
            "last_sweep": self.sweeper.last,
            "started": self.started, "live_jobs": totals["live"],
            "sweep_interval_s": self.config.sweep_interval, "config": self.config.source,
            "templates": {name: {"areas": {a: k.value for a, k in t.areas.items()}}
                          for name, t in sorted(self.config.templates.items())},
            # uid -> live jobs, bytes, files and the limits that apply (a non-root reader sees its own)
            "users": {str(uid): mine for uid, mine in sorted(self.service.usage.users().items())},
        }

    def reload(self) -> str:
        """Read the config file again (``reload`` on ``.wsfs/control``, ``systemctl reload``).

        Templates, retention, limits and publish targets apply from now on, to new jobs and
        to the next sweep; open files and running jobs are untouched.  A config that does
        not load is refused whole (``EINVAL``, the reason in the event and the log) and the
        one in use stays.  (``sweep_interval`` takes effect at the next start.)
        """
        from ..core.config import ConfigError, load_config
        from ..core.errors import BadCommandError

        try:
            config = load_config(self.config_file)
        except ConfigError as exc:
            log.error("reload refused, the config in use stays: %s", exc)
            raise BadCommandError(f"reload refused, the config in use stays: {exc}") from None
        self.config = self.service.config = config
        log.info("config reloaded from %s", config.source)
        return config.source or "the built-in defaults"

    def sweep(self, dry_run: bool = False) -> dict:
        return self.sweeper.sweep(dry_run=dry_run).as_dict()

    def doctor(self, repair: bool = False) -> dict:
        """``doctor [repair]`` on the control file: the report is recorded as a ``doctor`` event.

        The trash is emptied first, so what the report lists there is what
        could not be deleted, not what the trash thread had not reached yet.
        """
        from ..core import doctor

        with self._doctor_lock:
            stuck: set[str] = set()
            self.empty_trash(stuck)
            # Only what could not be deleted: a purge or an ending may move trees in meanwhile.
            report = doctor.run(self.service, repair_too=repair, live=True, busy=self.open_jobs(),
                                trash_stuck=stuck)
            summary = report.as_dict()
            if report.findings:
                log.warning("doctor%s: %d problem(s): %s", " repair" if repair else "", len(report.findings),
                            "; ".join(f.line() for f in report.findings[:20]))
            for action in report.actions:
                log.warning("doctor repair: %s", action)
            self.service.records.add_event("doctor", None, **summary)
            return summary

    def close(self, clean: bool) -> bool:
        """Stop the threads, flush, and mark the store clean; returns whether it could.

        A worker still busy after ``JOIN_TIMEOUT`` (a transition that will not
        end) leaves the store ``live``: the next mount recovers, as after a crash.
        """
        self.stop.set()
        self.sweeper.stopping.set()
        self.publisher.stopping.set()
        self.service.publish_wake.set()
        self.service.trash_wake.set()
        self.sweeper.wake.set()
        deadline = time.monotonic() + JOIN_TIMEOUT
        for thread in self.threads:
            thread.join(timeout=max(deadline - time.monotonic(), 0.1))
        stuck = [t.name for t in self.threads if t.is_alive()]
        if stuck:
            log.error("thread(s) %s did not stop within %.0fs: leaving the store for recovery",
                      ", ".join(stuck), JOIN_TIMEOUT)
            return False
        try:
            self.service.manifest.flush()
            if clean:
                with self.store.write() as w:
                    w.put_meta("mount", {"state": "clean", "pid": os.getpid(), "since": time.time(),
                                         "mountpoint": self.mountpoint})
        except StoreError as exc:  # a full disk: the store stays "live", the next mount recovers
            log.warning("could not close the store cleanly: %s", exc)
            clean = False
        self.store.close()
        self.tree.close()
        return clean


def serve(mountpoint: str, data_dir: str, config: Config, *, allow_other: bool = False, debug: bool = False,
          config_file: str | None = None) -> int:
    """Mount and serve in this process until unmounted or signalled.  ``reload`` on
    ``.wsfs/control`` (``systemctl reload``) reads ``config_file`` again (None: the default)."""
    from .binding import FUSE, LIBFUSE_VERSION  # only the daemon needs libfuse
    from .operations import WsfsOperations

    check_data_dir(data_dir)
    check_mountpoint(mountpoint)
    lock_fd = lock_data_dir(data_dir)
    daemon = Daemon(mountpoint, data_dir, config, config_file)
    try:
        daemon.open()
    except StoreError as exc:
        raise MountError(str(exc)) from None
    ops = WsfsOperations(daemon.service, daemon.tree, status=daemon.status, sweep=daemon.sweep,
                         doctor=daemon.doctor, reload=daemon.reload)
    daemon.open_jobs = ops.open_jobs
    daemon.passthrough = ops.passthrough_mode
    daemon.sweeper.open_jobs = ops.open_jobs
    daemon.hasher = ops.hasher
    daemon.start_threads()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    options = dict(foreground=True, nothreads=False, fsname=FSNAME, subtype=FSNAME, default_permissions=True,
                   nosuid=True, nodev=True, raw_fi=True, debug=debug, max_threads=MAX_THREADS,
                   max_idle_threads=MAX_THREADS)  # libfuse 3.14 warns about its own default (-1)
    if allow_other:
        options["allow_other"] = True
    clean = False
    try:
        log.debug("libfuse %d.%d, options %s", *LIBFUSE_VERSION, options)
        FUSE(ops, daemon.mountpoint, **options)
        clean = True
    except RuntimeError as exc:
        # mfusepy raises RuntimeError(status) when the loop ended by a signal; that is a normal stop
        # as long as libfuse unmounted.
        clean = not is_wsfs_mount(daemon.mountpoint)
        if not clean:
            log.error("the FUSE loop failed: %s", exc)
    finally:
        # libfuse owns SIGTERM (STYLE: no Python handler before FUSE()), so the first moment we
        # know we are stopping is here: the loop has returned and libfuse has unmounted.
        sd_notify("STOPPING=1\nSTATUS=stopping: finishing transitions, closing the store")
        clean = daemon.close(clean)
        os.close(lock_fd)
    log.info("wsfs stopped (%s)", "clean" if clean else "unclean")
    sd_notify(f"STATUS=stopped ({'clean' if clean else 'unclean: the next mount recovers'})")
    return 0 if clean else 1


def spawn(mountpoint: str, data_dir: str, config_file: str | None, *, allow_other: bool,
          log_level: str) -> None:
    """Start ``wsfs mount --foreground`` detached; return once the mount answers."""
    check_data_dir(data_dir)
    check_mountpoint(mountpoint)
    log_path = os.path.join(data_dir, LOG_FILE)
    args = [sys.executable, "-m", "wsfs", "--log-level", log_level, "mount", mountpoint, "--data", data_dir,
            "--foreground"]
    if config_file:
        args += ["--config", config_file]
    if allow_other:
        args.append("--allow-other")
    with open(log_path, "ab") as log_file:
        start = log_file.tell()
        child = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                                 start_new_session=True, close_fds=True)
    deadline = time.monotonic() + READY_TIMEOUT
    status = os.path.join(mountpoint, ".wsfs", "status")
    while time.monotonic() < deadline:
        if child.poll() is not None:
            with open(log_path, "rb") as f:
                f.seek(start)
                lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
            reason = lines[-1] if lines else f"exit status {child.returncode}"
            raise MountError(reason.split("wsfs: ", 1)[-1])
        if is_wsfs_mount(mountpoint):
            try:
                with open(status) as f:
                    json.load(f)
                return
            except (OSError, ValueError):
                pass
        time.sleep(0.05)
    child.terminate()
    raise MountError(f"the mount did not answer within {READY_TIMEOUT:.0f}s (see {log_path})")


def unmount(mountpoint: str, *, lazy: bool = False, timeout: float = 30.0) -> str:
    """Unmount and wait for the daemon to finish its clean shutdown.

    Returns the line to tell the user: unmounted (the daemon has closed its
    store), a stale mount (its daemon was gone) cleared, or, with ``lazy`` on
    a busy mount, detached: gone from the tree now, while the daemon serves
    the open files until they are closed and then stops as cleanly.  A busy
    mount without ``lazy`` raises ``MountError`` naming the processes that
    hold it; nothing is changed then.
    """
    state = probe_mount(mountpoint)
    if state == "stale":
        fusermount(mountpoint, lazy=True)
        return f"cleared the stale mount at {mountpoint} (its daemon was gone)"
    if state is None or not is_wsfs_mount(mountpoint):
        raise MountError(f"{mountpoint} is not a wsfs mount")
    pid = _daemon_pid(mountpoint)
    connection = _connection(mountpoint)
    result = fusermount(mountpoint)
    if result.returncode != 0:
        message = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "fusermount3 failed"
        if "busy" not in message.lower():
            raise MountError(message)
        holders = _holders(mountpoint)
        held = f": held by {holders}" if holders else ""
        if not lazy:
            raise MountError(f"cannot unmount {mountpoint}: it is busy{held}. Close those files (or cd out), "
                             "or detach it now with --lazy")
        result = fusermount(mountpoint, lazy=True)
        if result.returncode != 0:
            raise MountError(result.stderr.strip() or "fusermount3 -uz failed")
        return (f"detached {mountpoint}{held}; the daemon stops cleanly once those files are closed")
    if pid is None:
        return f"unmounted {mountpoint} (its daemon's pid was not readable: it may still be finishing)"
    if _wait_gone(pid, HELD_ELSEWHERE_S):
        return f"unmounted {mountpoint}"
    # Unmounted here, and the daemon still serves: another mount namespace (a service with
    # PrivateTmp=, a container started meanwhile) holds a copy of the mount, so the kernel never
    # tells the daemon.  End the connection itself: every copy answers ENOTCONN from now on,
    # and the daemon stops as after an unmount.
    how = _end_connection(connection, pid)
    if not _wait_gone(pid, timeout):
        raise MountError(f"{mountpoint} is unmounted, but its daemon (pid {pid}) is still running "
                         f"{timeout:.0f}s after {how}; its log says why")
    return f"unmounted {mountpoint} (another mount namespace still held it: {how}, the daemon stopped)"


HELD_ELSEWHERE_S = 3.0  # an unmounted daemon with nothing in flight is gone by then
FUSECTL = "/sys/fs/fuse/connections"


def _connection(mountpoint: str) -> str | None:
    """The FUSE connection id of the mount: the minor of its device number."""
    device = mount_device(mountpoint)
    return None if device is None else device.split(":")[1]


def _end_connection(connection: str | None, pid: int) -> str:
    """Abort the FUSE connection (root, through fusectl, mounted for that moment if it is not
    mounted: the machine is left as it was), else SIGTERM."""
    if connection is not None and os.geteuid() == 0:
        mounted_here = not os.path.ismount(FUSECTL) and subprocess.run(
            ["mount", "-t", "fusectl", "fusectl", FUSECTL], capture_output=True).returncode == 0
        try:
            with open(os.path.join(FUSECTL, connection, "abort"), "w") as f:
                f.write("1")
            return "its FUSE connection was aborted"
        except OSError:
            pass
        finally:
            if mounted_here:
                subprocess.run(["umount", FUSECTL], capture_output=True)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)
    return "SIGTERM"


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _daemon_pid(mountpoint: str) -> int | None:
    try:
        with open(os.path.join(mountpoint, ".wsfs", "status")) as f:
            return int(json.load(f)["pid"])
    except (OSError, ValueError, KeyError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours is gone for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _holders(mountpoint: str) -> str:
    import psutil

    found = []
    prefix = os.path.abspath(mountpoint) + os.sep
    for proc in psutil.process_iter(["pid", "name"]):
        try:
            cwd = proc.cwd()
            files = [f.path for f in proc.open_files()]
        except (psutil.Error, OSError):
            continue
        if any(p == prefix[:-1] or p.startswith(prefix) for p in [cwd] + files):
            found.append(f"{proc.info['name']} (pid {proc.info['pid']})")
    return ", ".join(found[:10])
