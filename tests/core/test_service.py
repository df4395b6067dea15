"""wsfs as a service (docs/spec.md §11): the systemd units, sd_notify, clean stops, make install, journald logs.

The units are checked with ``systemd-analyze verify`` (the ``systemd``
package; ``make test`` installs it).  Without it these tests skip, unless
``WSFS_REQUIRE_FUSE=1`` (CI), where they fail.  The notify test plays
systemd: it owns the ``$NOTIFY_SOCKET`` datagram socket, starts
``wsfs mount --foreground`` itself and stops it with SIGTERM.
"""

from __future__ import annotations

import io
import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import REPO, MountedWsfs, is_mounted, mount_state, require_fuse, sh

from wsfs import __version__
from wsfs.client.cli import main, setup_logging, stderr_is_journal
from wsfs.core.store import Store

UNITS = ("wsfs.service", "wsfs@.service")
WAIT = 30.0  # a deadline for things that must happen, never a measured duration


@pytest.fixture(autouse=True)
def _logging_restored(keep_logging):
    """The CLI's ``main`` reconfigures the root logger: conftest's ``keep_logging`` puts it back."""


def require_systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if os.environ.get("WSFS_REQUIRE_FUSE") == "1":
            pytest.fail("WSFS_REQUIRE_FUSE=1 but systemd-analyze is missing (make test installs the systemd package)")
        pytest.skip("systemd-analyze is missing (apt-get install systemd)")
    return tool


class Unit(dict):
    """A unit file as {section: {key: [values]}} (keys repeat: ExecStartPre=, Environment=)."""

    def one(self, section: str, key: str, default=None):
        values = self.get(section, {}).get(key)
        if not values:
            return default
        assert len(values) == 1, (section, key, values)
        return values[0]


def read_unit(path: Path) -> Unit:
    unit, section = Unit(), None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def verify_units(paths: list[Path]) -> list[str]:
    """``systemd-analyze verify``: the problems it reports about these files (warnings included)."""
    tool = require_systemd_analyze()
    result = subprocess.run([tool, "verify", *map(str, paths)], capture_output=True, text=True, timeout=120)
    names = [p.name for p in paths] + [p.name.replace("@.", "@i.") for p in paths] + [str(p.parent) for p in paths]
    problems = [ln for ln in (result.stdout + result.stderr).splitlines() if any(n in ln for n in names)]
    if result.returncode != 0:
        problems.append(f"exit status {result.returncode}: {result.stderr.strip()}")
    return problems


def render_units(src_dir: Path, dest: Path, wsfs_path: str, prefix: str = "/usr/local") -> list[Path]:
    """The units with ExecStart pointing at an existing ``wsfs`` (verify checks the binary exists)."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for name in UNITS:
        text = (src_dir / name).read_text().replace(f"{prefix}/bin/wsfs", wsfs_path)
        (dest / name).write_text(text)
        out.append(dest / name)
    return out


# -- the units ------------------------------------------------------------------------------------


def test_units_say_what_the_service_needs():
    for name in UNITS:
        unit = read_unit(REPO / "systemd" / name)
        assert unit.one("Service", "Type") == "notify", name
        assert unit.one("Service", "Restart") == "on-failure", name
        assert unit.one("Service", "KillMode") != "none", name
        state_dir = unit.one("Service", "StateDirectory")
        assert state_dir, name
        # A normal start logs nothing alarming: no fusermount step that fails when nothing is
        # mounted (wsfs mount clears a stale mount itself), and the mount point is made.
        assert unit["Service"]["ExecStartPre"] == ["mkdir -p ${WSFS_MOUNTPOINT}"], name
        # A bad config is final (exit 78): no restart every 5 s; reload reads the config again.
        assert unit.one("Service", "RestartPreventExitStatus") == "78", name
        assert unit.one("Service", "ExecReload") == "/usr/local/bin/wsfs reload --mount ${WSFS_MOUNTPOINT}", name
        assert unit.one("Unit", "StartLimitBurst"), name
        # Documentation= names a file make install installs.
        assert unit.one("Unit", "Documentation") == "file:///usr/local/share/doc/wsfs/README.md", name
        exec_start = unit.one("Service", "ExecStart").split()
        assert exec_start[:3] == ["/usr/local/bin/wsfs", "mount", "${WSFS_MOUNTPOINT}"], name
        assert "--foreground" in exec_start and "--config" in exec_start, name
        # The data dir is the StateDirectory= (%S is /var/lib for system units).
        assert exec_start[exec_start.index("--data") + 1] == "%S/" + state_dir, name
        assert unit.one("Install", "WantedBy") == "multi-user.target", name
        # Any of these would give the daemon its own mount namespace: the mount would be invisible.
        for key in ("PrivateTmp", "ProtectSystem", "ProtectHome", "PrivateMounts", "TemporaryFileSystem"):
            assert key not in unit["Service"], (name, key)
    assert "/etc/wsfs/wsfs.toml" in read_unit(REPO / "systemd" / "wsfs.service").one("Service", "ExecStart")
    instance = read_unit(REPO / "systemd" / "wsfs@.service")
    assert "--config /etc/wsfs/%i.toml" in instance.one("Service", "ExecStart")
    assert instance.one("Service", "StateDirectory") == "wsfs-%i"


def test_units_pass_systemd_analyze_verify(tmp_path):
    wsfs = str(REPO / ".venv" / "bin" / "wsfs") if (REPO / ".venv" / "bin" / "wsfs").exists() else shutil.which("wsfs")
    assert wsfs, "no wsfs command to point the units at"
    units = render_units(REPO / "systemd", tmp_path / "units", wsfs)
    assert verify_units(units) == []


def test_verify_catches_a_broken_unit(tmp_path):
    """The check above can fail: a bad Type= is only a warning for systemd, and still caught."""
    wsfs = shutil.which("true")
    units = render_units(REPO / "systemd", tmp_path / "units", wsfs)
    broken = units[0]
    broken.write_text(broken.read_text().replace("Type=notify", "Type=notifyy"))
    assert any("notifyy" in line for line in verify_units([broken]))
    missing = units[1]
    missing.write_text(missing.read_text().replace(wsfs, "/nonexistent/wsfs"))
    assert verify_units([missing]) != []


# -- sd_notify: READY=1 once the mount answers, STATUS=, STOPPING=1 -------------------------------------------


class NotifySocket:
    """A stand-in for systemd's notification socket (abstract namespace: no path length limit)."""

    def __init__(self):
        self.name = f"@wsfs-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name[1:])
        self.messages: list[str] = []

    def wait_for(self, predicate, proc: subprocess.Popen, what: str) -> str:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            readable, _, _ = select.select([self.sock], [], [], 0.1)
            if readable:
                message = self.sock.recv(65536).decode()
                self.messages.append(message)
                if predicate(message):
                    return message
            elif proc.poll() is not None and not select.select([self.sock], [], [], 0)[0]:
                raise AssertionError(f"the daemon exited ({proc.returncode}) before {what}; got {self.messages}")
        raise AssertionError(f"no {what} within {WAIT}s; got {self.messages}")

    def close(self):
        self.sock.close()


def mount_answers(mnt: Path) -> bool:
    try:
        json.loads((mnt / ".wsfs" / "status").read_text())
        return is_mounted(mnt)
    except (OSError, ValueError):
        return False


def fields(message: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in message.splitlines() if "=" in line)


def test_notify_ready_status_stopping_and_a_clean_store(tmp_path):
    require_fuse()
    notify = NotifySocket()
    m = MountedWsfs(tmp_path / "svc")
    m.log.touch()
    st = m.log.stat()
    env = dict(os.environ, NOTIFY_SOCKET=notify.name, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}",
               PYTHONPATH=str(REPO))
    m._log_file = open(m.log, "ab")
    m.proc = subprocess.Popen(m.cli_args(), stdout=m._log_file, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
    try:
        ready = notify.wait_for(lambda msg: "READY=1" in msg.splitlines(), m.proc, "READY=1")
        # The moment READY=1 arrives the mount must already answer (a unit After=wsfs relies on it).
        assert mount_answers(m.mnt), "READY=1 came before the mount answered"
        assert all("READY=1" not in msg for msg in notify.messages[:-1])
        assert fields(ready)["STATUS"] == "no jobs; 0B in 0 files"

        sh("mkdir workspaces/j1 && echo hello > workspaces/j1/output/a.txt", cwd=m.mnt)
        status = notify.wait_for(lambda msg: "1 running" in fields(msg).get("STATUS", ""), m.proc, "STATUS=1 running")
        assert "READY=1" not in status

        m.proc.send_signal(signal.SIGTERM)
        notify.wait_for(lambda msg: "STOPPING=1" in msg.splitlines(), m.proc, "STOPPING=1")
        assert not is_mounted(m.mnt), "STOPPING=1 came while the mount was still there"
        assert m.proc.wait(timeout=WAIT) == 0
        final = notify.wait_for(lambda msg: "STATUS=stopped" in msg, m.proc, "the last STATUS=")
        assert fields(final)["STATUS"] == "stopped (clean)"
        kinds = [next(iter(fields(msg))) for msg in notify.messages]
        assert kinds[0] == "READY" and kinds.count("STOPPING") == 1
        assert kinds.index("STOPPING") > max(i for i, msg in enumerate(notify.messages) if "1 running" in msg)
    finally:
        m.stop()
        notify.close()

    store = Store(str(m.data / "store"), readonly=True)
    try:
        with store.read() as r:
            assert r.meta("mount")["state"] == "clean"
            assert r.job("j1").usage == {"bytes": 6, "files": 1}
    finally:
        store.close()

    # stderr was "the journal" (JOURNAL_STREAM names it): priority prefixes, no timestamps.
    lines = [ln for ln in m.log_text().splitlines() if ln.strip()]
    assert f"<6>wsfs.daemon: wsfs {__version__} mounted" in m.log_text()
    assert any(ln.startswith("<7>") for ln in lines)  # --log-level debug
    assert all(ln.startswith("<") for ln in lines if "wsfs." in ln), lines[:5]
    assert "<6>wsfs.daemon: wsfs stopped (clean)" in m.log_text()


def test_sd_notify_sends_nothing_without_a_socket(monkeypatch):
    from wsfs.fuse import daemon

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    daemon.sd_notify("READY=1")  # no socket, no error


# -- clean stops: SIGTERM is above; `wsfs unmount`, busy, --lazy -----------------------------------------


def test_unmount_of_a_plain_directory_is_an_error(tmp_path):
    result = CliRunner().invoke(main, ["unmount", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr == f"wsfs: {tmp_path} is not a wsfs mount\n"


# -- make install ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_make_install_and_uninstall_into_destdir(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make is missing")
    dest = tmp_path / "root"
    prefix = "/opt/wsfs"
    edited = dest / "etc" / "wsfs" / "wsfs.toml"
    edited.parent.mkdir(parents=True)
    edited.write_text("# mine\nsweep_interval = \"5m\"\n")
    result = subprocess.run(["make", "install", f"DESTDIR={dest}", f"PREFIX={prefix}"], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr

    wsfs = dest / prefix.lstrip("/") / "bin" / "wsfs"
    run = subprocess.run([str(wsfs), "--version"], capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")})
    assert run.returncode == 0, run.stderr
    assert run.stdout == f"wsfs, version {__version__}\n"
    venv = dest / prefix.lstrip("/") / "lib" / "wsfs" / "venv"
    assert list(venv.glob("lib/python*/site-packages/wsfs/client/cli.py")), "not installed non-editable in the venv"
    assert not list(venv.glob("lib/python*/site-packages/__editable__*"))
    assert edited.read_text().startswith("# mine")  # an existing config is never overwritten
    assert (dest / prefix.lstrip("/") / "share" / "doc" / "wsfs" / "README.md").exists()
    completion = dest / prefix.lstrip("/") / "share" / "bash-completion" / "completions" / "wsfs"
    assert "_WSFS_COMPLETE" in completion.read_text()

    unit_dir = dest / "etc" / "systemd" / "system"
    for name in UNITS:
        exec_start = read_unit(unit_dir / name).one("Service", "ExecStart")
        assert exec_start.startswith(f"{prefix}/bin/wsfs mount "), exec_start
        assert not [ln for ln in (unit_dir / name).read_text().splitlines()
                    if "/usr/local" in ln and not ln.startswith("#")]
    # The installed units verify, with their ExecStart pointed at the staged binary.
    assert verify_units(render_units(unit_dir, tmp_path / "check", str(wsfs), prefix=prefix)) == []

    result = subprocess.run(["make", "uninstall", f"DESTDIR={dest}", f"PREFIX={prefix}"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not wsfs.exists() and not venv.exists()
    assert not any((unit_dir / name).exists() for name in UNITS)
    assert edited.exists() and "kept" in result.stdout  # edited: kept


def test_make_install_puts_the_sample_config_in_place(tmp_path):
    """The sample config (no venv: only the config step, through make's dry run listing)."""
    result = subprocess.run(["make", "-n", "install", f"DESTDIR={tmp_path}"], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f'install -m 0644 etc/wsfs.toml "{tmp_path}/etc/wsfs/wsfs.toml"' in result.stdout
    assert f"{tmp_path}/usr/local/lib/wsfs/venv" in result.stdout


# -- logs: journald priorities only when stderr is the journal ------------------------------------------


def test_journal_prefixes_when_journal_stream_names_stderr(tmp_path, monkeypatch):
    path = tmp_path / "stderr"
    with open(path, "w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setattr(sys, "stderr", stream)
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert stderr_is_journal()
        setup_logging("debug")
        logging.getLogger("wsfs.test").debug("detail")
        logging.getLogger("wsfs.test").info("hello")
        logging.getLogger("wsfs.test").warning("careful")
        logging.getLogger("wsfs.test").error("broken")
    assert path.read_text().splitlines() == ["<7>wsfs.test: detail", "<6>wsfs.test: hello",
                                             "<4>wsfs.test: careful", "<3>wsfs.test: broken"]


def test_no_journal_prefixes_when_journal_stream_is_someone_elses(tmp_path, monkeypatch):
    """A shell started by a service inherits JOURNAL_STREAM; its own stderr is not the journal."""
    path = tmp_path / "stderr"
    with open(path, "w") as stream:
        monkeypatch.setattr(sys, "stderr", stream)
        monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
        assert not stderr_is_journal()
        setup_logging("info")
        logging.getLogger("wsfs.test").debug("hidden at info")
        logging.getLogger("wsfs.test").info("hello")
    lines = path.read_text().splitlines()
    assert len(lines) == 1 and lines[0].endswith(" INFO wsfs.test[MainThread]: hello")
    assert not lines[0].startswith("<")


def test_stderr_without_a_file_is_not_the_journal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    assert not stderr_is_journal()


def test_log_level_option_is_checked():
    result = CliRunner().invoke(main, ["--log-level", "loud", "config"])
    assert result.exit_code == 2
    assert "loud" in result.output


# -- the ordered shutdown, without a mount ---------------------------------------------------------------


def test_shutdown_marks_clean_only_when_every_thread_stopped(tmp_path, monkeypatch):
    import threading

    from wsfs.core.config import default_config
    from wsfs.fuse import daemon as daemon_mod

    def opened() -> daemon_mod.Daemon:
        d = daemon_mod.Daemon(str(tmp_path / "mnt"), str(tmp_path / "data"), default_config())
        d.open()
        return d

    d = opened()
    release = threading.Event()
    stuck = threading.Thread(target=release.wait, name="wsfs-stuck", daemon=True)
    stuck.start()
    d.threads.append(stuck)
    monkeypatch.setattr(daemon_mod, "JOIN_TIMEOUT", 0.2)
    assert d.close(True) is False  # a worker that will not stop: the store stays "live"
    release.set()
    stuck.join()
    d.store.close()
    d.tree.close()
    assert mount_state(tmp_path / "data") == "live"

    d = opened()  # the next one recovers, then stops cleanly
    assert d.close(True) is True
    assert mount_state(tmp_path / "data") == "clean"


def test_a_stopping_sweeper_starts_no_new_action(core, clock):
    from wsfs.core.model import JobState
    from wsfs.core.retention import Sweeper

    for job in ("a", "b"):
        core.create_job(job, 0, 0)
        core.transition(job, JobState.FAILED, "x")
    clock.advance(8 * 86400)
    sweeper = Sweeper(core)
    sweeper.stopping.set()
    report = sweeper.sweep()
    assert [(a.job, a.action, a.done, a.error) for a in report.actions] == [
        ("a", "hide", False, "not done: wsfs is stopping"), ("b", "hide", False, "not done: wsfs is stopping")]
    assert not core.records.require("a").hidden


def test_log_level_from_the_environment(tmp_path):
    """A unit sets it with Environment=WSFS_LOG_LEVEL=debug (a drop-in), without touching ExecStart=."""
    result = CliRunner().invoke(main, ["config"], env={"WSFS_LOG_LEVEL": "warning"})
    assert result.exit_code == 0
    assert logging.getLogger().level == logging.WARNING
    result = CliRunner().invoke(main, ["--log-level", "debug", "config"], env={"WSFS_LOG_LEVEL": "warning"})
    assert logging.getLogger().level == logging.DEBUG  # the option wins


def _build_libfuse(venv, **env):
    return subprocess.run(["bash", str(REPO / "tools" / "build-libfuse.sh"), str(venv)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **env})


def test_build_libfuse_says_why_not_and_never_fails_make(tmp_path):
    """make runs tools/build-libfuse.sh once per venv: where it cannot build, it says why, builds
    nothing and exits 0, and wsfs runs on the system's libfuse."""
    result = _build_libfuse(tmp_path / "venv", WSFS_LIBFUSE_BUILD="0", WSFS_LIBFUSE_FROM="")
    assert result.returncode == 0, result.stderr
    assert "WSFS_LIBFUSE_BUILD=0: not building libfuse 3.17" in result.stderr
    assert "no kernel passthrough" in result.stderr
    assert not (tmp_path / "venv" / "lib" / "wsfs-libfuse").exists()


def test_build_libfuse_takes_a_build_made_before(tmp_path):
    """make install copies the checkout's build (WSFS_LIBFUSE_FROM) instead of building again."""
    made = tmp_path / "made"
    made.mkdir()
    (made / "libfuse3.so.3.17.2").write_bytes(b"lib")
    (made / "libfuse3.so.3").symlink_to("libfuse3.so.3.17.2")
    (made / "passthrough_hp").write_bytes(b"hp")
    (made / "passthrough_hp").chmod(0o755)
    result = _build_libfuse(tmp_path / "venv", WSFS_LIBFUSE_FROM=str(made), WSFS_LIBFUSE_BUILD="0")
    assert result.returncode == 0, result.stderr
    dest = tmp_path / "venv" / "lib" / "wsfs-libfuse"
    assert os.readlink(dest / "libfuse3.so.3") == "libfuse3.so.3.17.2"
    assert (dest / "libfuse3.so.3.17.2").read_bytes() == b"lib" and os.access(dest / "passthrough_hp", os.X_OK)
    assert "copied into" in result.stdout
