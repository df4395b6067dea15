"""Shared fixtures: a core on a tmp data dir (no mount) and a real FUSE mount.

Mount tests need ``/dev/fuse`` and ``fusermount3``; without them they skip,
unless ``WSFS_REQUIRE_FUSE=1`` (CI), where they fail.  Every mount is
unmounted in ``finally`` (``fusermount3 -u -z``, then terminate, then kill),
and a failing test prints the daemon's log.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wsfs.core.config import default_config, parse_config
from wsfs.core.lifecycle import open_data_dir

#: ``fs``: the FUSE operations on a fresh data dir, no mount (tests/core/test_operations*.py).
pytest_plugins = ("operations_support",)

REPO = Path(__file__).resolve().parent.parent
MOUNT_TIMEOUT = 20.0


class FakeClock:
    """An injected clock: tests move time, nobody sleeps."""

    def __init__(self, start: float = 1_700_000_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def core(tmp_path, clock):
    """A JobService on a fresh data dir, with a fake clock."""
    service = open_data_dir(str(tmp_path / "data"), default_config(), clock=clock)
    yield service
    service.close()


def make_core(data_dir, clock=None, config=None):
    """A JobService on ``data_dir`` (for tests that reopen one)."""
    clock = clock or FakeClock()
    return open_data_dir(str(data_dir), config or default_config(), clock=clock)


# -- real mounts ------------------------------------------------------------------


def fuse_missing() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed"
    return None


def require_fuse():
    reason = fuse_missing()
    if reason:
        if os.environ.get("WSFS_REQUIRE_FUSE") == "1":
            pytest.fail(f"WSFS_REQUIRE_FUSE=1 but {reason}")
        pytest.skip(reason)


def is_mounted(path) -> bool:
    target = os.path.abspath(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f if len(line.split()) > 2)


class MountedWsfs:
    """A ``wsfs mount --foreground`` child on a tmp mount point and data dir."""

    def __init__(self, base: Path, *, config: str | None = None, env: dict | None = None,
                 allow_other: bool = False, data: Path | None = None):
        self.base = base
        self.mnt = base / "mnt"
        self.data = data or (base / "data")
        self.log = base / "daemon.log"
        self.config = config
        self.env = env or {}
        self.allow_other = allow_other
        self.proc: subprocess.Popen | None = None
        self.mnt.mkdir(parents=True, exist_ok=True)

    def cli_args(self) -> list[str]:
        args = [sys.executable, "-m", "wsfs", "--log-level", "debug", "mount", str(self.mnt),
                "--data", str(self.data), "--foreground"]
        if self.config:
            cfg = self.base / "wsfs.toml"
            cfg.write_text(self.config)
            args += ["--config", str(cfg)]
        if self.allow_other:
            args.append("--allow-other")
        return args

    def start(self, extra_env: dict | None = None) -> MountedWsfs:
        _MOUNTS_IN_TEST.append(self.mnt)
        env = dict(os.environ, **self.env, **(extra_env or {}))
        env.setdefault("PYTHONPATH", str(REPO))
        self._log_file = open(self.log, "ab")
        self.proc = subprocess.Popen(self.cli_args(), stdout=self._log_file, stderr=subprocess.STDOUT,
                                     env=env, cwd=str(REPO))
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"wsfs exited with {self.proc.returncode} before mounting:\n{self.log_text()}")
            if is_mounted(self.mnt):
                try:
                    json.loads((self.mnt / ".wsfs" / "status").read_text())
                    return self
                except (OSError, ValueError):
                    pass
            time.sleep(0.02)
        raise RuntimeError(f"wsfs did not mount within {MOUNT_TIMEOUT}s:\n{self.log_text()}")

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def ws(self) -> Path:
        return self.mnt / "workspaces"

    def kill9(self) -> None:
        """SIGKILL the daemon: what a crash looks like (the mount goes stale)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        """Unmount cleanly (fusermount3 -u), wait for the daemon to exit; escalate if needed."""
        if self.proc is None:
            return
        try:
            if is_mounted(self.mnt):
                subprocess.run(["fusermount3", "-u", str(self.mnt)], capture_output=True)
                if is_mounted(self.mnt):
                    subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=5)
        finally:
            if is_mounted(self.mnt):
                subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)
            self._log_file.close()
            self.proc = None

    def restart(self, extra_env: dict | None = None) -> MountedWsfs:
        self.stop()
        return self.start(extra_env)

    def daemon_errors(self, offset: int = 0) -> list[str]:
        """The daemon log's problems (``log_problems``) after ``offset`` characters (an earlier
        run that died on purpose); the daemon must have none."""
        return log_problems(self.log_text()[offset:])


_LOG_RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (\w+) ")


def log_problems(text: str) -> list[str]:
    """The daemon log's ERROR and CRITICAL records and its tracebacks, except the traceback mfusepy
    attaches to the DEBUG line of every errno an operation returns (``--log-level debug``):
    an EROFS or EPERM a test provokes is an answer, not an error."""
    problems, level = [], None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        record = _LOG_RECORD.match(line)
        if record:
            level = record.group(1)
            if level in ("ERROR", "CRITICAL"):
                problems.append(line)
        elif line.startswith("Traceback"):
            end = i + 1
            while end < len(lines) and lines[end][:1] in (" ", "\t"):
                end += 1
            answer = end < len(lines) and lines[end].startswith("mfusepy.FuseOSError")
            if not (answer or level == "DEBUG"):
                problems.append(line)
    return problems


def events(source, kind: str | None = None, job: str | None = None) -> list[dict]:
    """The events of a mount (``.wsfs/events``, as its caller may read them) or of a core
    (``JobService``: the store's), of one ``kind`` and ``job`` if given."""
    if isinstance(source, MountedWsfs):
        found = [json.loads(line) for line in (source.mnt / ".wsfs" / "events").read_text().splitlines() if line]
    else:
        with source.store.read() as r:
            found = list(r.events())
    return [e for e in found if (kind is None or e["kind"] == kind) and (job is None or e.get("job") == job)]


@pytest.fixture
def mount_factory(tmp_path, request):
    """Make mounts: ``mount_factory(config=..., env=...)``; all are stopped in finally."""
    require_fuse()
    made: list[MountedWsfs] = []

    def factory(**kwargs) -> MountedWsfs:
        sub = tmp_path / f"m{len(made)}"
        m = MountedWsfs(sub, **kwargs)
        made.append(m)
        return m.start()

    try:
        yield factory
    finally:
        failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
        for m in made:
            try:
                m.stop()
            finally:
                if failed:
                    sys.stderr.write(f"\n--- daemon log ({m.mnt}) ---\n{m.log_text()[-20000:]}\n")


@pytest.fixture
def wsfs_mount(mount_factory) -> MountedWsfs:
    """One running mount with the default config."""
    return mount_factory()


@pytest.fixture
def keep_logging():
    """The CLI's ``main`` and ``setup_logging`` reconfigure the root logger: put it back afterwards."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


_MOUNTS_IN_TEST: list[Path] = []  # what MountedWsfs.start mounted during the test running now

#: The levels of the suite, one folder each (docs/architecture.md "Where each promise is tested").
LEVELS = {"unit": "pure modules: no data dir, no mount",
          "core": "the core and the FUSE operations on a fresh data dir, no mount",
          "mount": "a real mount, real shells and programs",
          "stress": "seeded stress suites, short in `make test`, full in `make stress`"}


def pytest_collection_modifyitems(config, items):
    """The folder is the level: every test in ``mount/`` is marked ``mount`` (so that
    ``pytest -m "not mount"``, ``make test-core``, needs no FUSE), every test in ``stress/`` is
    marked ``stress``; a stress test that mounts marks itself."""
    for item in items:
        level = Path(str(item.path)).parent.name
        if level == "mount":
            item.add_marker(pytest.mark.mount)
        elif level == "stress":
            item.add_marker(pytest.mark.stress)


@pytest.fixture(autouse=True)
def tests_that_mount_say_so(request):
    """A test that mounts wsfs outside ``mount/`` must be marked ``mount`` (a stress test), or
    ``make test-core`` would need FUSE after all."""
    _MOUNTS_IN_TEST.clear()
    yield
    report = os.environ.get("WSFS_REPORT_UNMOUNTED")
    if report and not _MOUNTS_IN_TEST and request.node.get_closest_marker("mount") is not None:
        with open(report, "a") as out:  # a mount test that did not mount (the CLI's mounts are not seen)
            out.write(request.node.nodeid + "\n")
    if _MOUNTS_IN_TEST and request.node.get_closest_marker("mount") is None:
        pytest.fail(f"{request.node.nodeid} mounts wsfs ({_MOUNTS_IN_TEST[0]}) but is not marked: "
                    "move it to tests/mount/, or (a stress test) mark it @pytest.mark.mount")


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)


def sh(command: str, *, cwd=None, check: bool = True, env=None) -> subprocess.CompletedProcess:
    """Run a real shell command line (bash), as a user would."""
    result = subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True, env=env,
                            timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"`{command}` failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def mount_state(data) -> str:
    """The data dir's mount record: ``live`` while a daemon serves it, ``clean`` after a clean end."""
    from wsfs.core.store import Store

    store = Store(str(Path(data) / "store"), readonly=True)
    try:
        with store.read() as r:
            return r.meta("mount")["state"]
    finally:
        store.close()


def assert_refused(result: subprocess.CompletedProcess, *words: str) -> str:
    """Exit code 1 and one line on stderr, ``wsfs: <reason>``, naming ``words``."""
    lines = result.stderr.strip().splitlines()
    assert (result.returncode, len(lines)) == (1, 1), result.stderr
    assert lines[0].startswith("wsfs: ")
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def wsfs_cli(*args, env=None, cwd=None, timeout=120) -> subprocess.CompletedProcess:
    """``wsfs ARGS`` as a separate process, as a user's shell runs it (no ``$WSFS_MOUNT`` unless given)."""
    full_env = dict(os.environ, PYTHONPATH=str(REPO))
    full_env.pop("WSFS_MOUNT", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "wsfs", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=timeout)


NOBODY = 65534


def as_nobody(command: str, cwd) -> subprocess.CompletedProcess:
    """A bash command line run as uid/gid 65534 with no supplementary groups."""
    return as_user(NOBODY, command, cwd)


def as_user(uid: int, command: str, cwd, groups: tuple[int, ...] = ()) -> subprocess.CompletedProcess:
    """A bash command line run as uid and gid ``uid`` (``setpriv``: no account needed), in ``groups``
    besides, else in no supplementary group."""
    extra = [f"--groups={','.join(map(str, groups))}"] if groups else ["--clear-groups"]
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", *extra, "bash", "-c", command],
                          cwd=cwd, capture_output=True, text=True, timeout=60)


def parse_toml_config(text: str):
    import tomllib

    return parse_config(tomllib.loads(text), "<test>")


def wait_until(predicate, what: str, timeout: float = 30.0, interval: float = 0.05, *, tolerate=()):
    """Poll ``predicate`` until it returns something truthy (returned); an exception of a type in
    ``tolerate`` counts as not yet.  Fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except tolerate:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        time.sleep(interval)


def errno_of(fn, *args, **kwargs) -> int | None:
    """The errno ``fn(*args)`` fails with, or None; an fd it opened is closed (an fd left open
    would keep the mount busy)."""
    try:
        result = fn(*args, **kwargs)
    except OSError as exc:
        return exc.errno
    if fn is os.open:
        os.close(result)
    return None


def control_as(m: MountedWsfs, uid: int, line: str) -> subprocess.CompletedProcess:
    """``echo LINE`` to the mount's ``.wsfs/control`` by ``uid``: the file is opened here (a test's
    tmp dir is not searchable by others), the write, whose caller the daemon checks, is uid's."""
    fd = os.open(m.mnt / ".wsfs" / "control", os.O_WRONLY)
    try:
        return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "bash", "-c",
                               f"echo '{line}' >&{fd}"], capture_output=True, text=True, pass_fds=(fd,))
    finally:
        os.close(fd)


def passthrough_of(mnt) -> str:
    """How the mount at ``mnt`` serves file data (``.wsfs/status``): ``on`` (kernel passthrough for
    reads and writes: libfuse >= 3.17, run as root), ``reads`` or ``off``."""
    return json.loads((Path(mnt) / ".wsfs" / "status").read_text())["fuse"]["passthrough"]


def sealed_write_errno(mnt) -> int:
    """What a write through a descriptor opened before its job's seal gets (docs/spec.md §8a): EROFS
    from the daemon, or EPERM from the backing file frozen under a passthrough writer."""
    return errno.EPERM if passthrough_of(mnt) == "on" else errno.EROFS


def wait_hashed(job_dir, path: str, timeout: float = 30.0) -> dict:
    """The manifest entry of ``path`` once it has its sha256: a file written through kernel
    passthrough (and one written out of order) is hashed after its close, in the background."""
    def entry():
        for line in (Path(job_dir) / ".manifest").read_text().splitlines():
            doc = json.loads(line)
            if doc["path"] == path and doc["sha256"]:
                return doc
        return None
    return wait_until(entry, f"{path} hashed in {job_dir}/.manifest", timeout)


def immutable(path) -> bool:
    """Has the file FS_IMMUTABLE_FL (``lsattr``'s ``i``)?  Read with FS_IOC_GETFLAGS, changing nothing."""
    import fcntl

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        flags = bytearray(8)
        fcntl.ioctl(fd, 0x80086601, flags, True)  # FS_IOC_GETFLAGS
        return bool(int.from_bytes(flags[:4], "little") & 0x10)  # FS_IMMUTABLE_FL
    finally:
        os.close(fd)
