"""Stress 4, hostile input through a real mount (docs/spec.md §3, §5, §10, §12).

hypothesis writes what a confused or malicious program would: random bytes
and near-misses of the grammar to ``.state`` and ``.wsfs/control`` (one
``os.write`` each, as ``echo`` does), random job ids to ``mkdir``, random
config files to ``wsfs mount --config``.  After every input:

- the daemon still answers (``statvfs``) and logs no error;
- a refusal carries a clear errno (``EINVAL``, ``EPERM``, ``EEXIST``,
  ``ENOENT``, ``EDQUOT``, ``ENAMETOOLONG``), changes nothing (the job's
  record, the list of jobs, the data dir) and is recorded as a ``rejected``
  event with that errno;
- an acceptance is one the grammar (``wsfs.control``) accepts, and it did
  what it says.

One mount serves all the examples of a test: hostile input must not wear it
down.  ``WSFS_STRESS=full`` tries 4,000 inputs per grammar and 400 config
files (250 and 25 short); ``WSFS_SEED`` reproduces a run (``stress_support``).
The regressions at the end are what these found: names that are not UTF-8,
counts past 64 bits in a config, paths too long for a manifest key.
"""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, MountedWsfs, is_mounted, require_fuse, sh
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from stress_support import StressMount, replay, seed, size

from wsfs.core.config import load_config
from wsfs.core.control import MAX_PID, parse_control_command, parse_state_command
from wsfs.core.errors import WsfsError
from wsfs.core.model import JOB_ID_RE

SEED = seed()


def stress(short: int, full: int):
    """hypothesis settings for a stress test: seeded from ``WSFS_SEED``, its example count, no deadline,
    no replay database.  One mount serves all the examples of a test on purpose (that is the point:
    hostile input must not wear it down), hence the fixture health check off."""
    def decorate(test):
        return hypothesis_seed(SEED)(settings(
            max_examples=size(short, full), deadline=None, database=None, print_blob=True,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                   HealthCheck.data_too_large, HealthCheck.filter_too_much])(test))
    return decorate


CLEAR_ERRNOS = {errno.EINVAL, errno.EPERM, errno.EEXIST, errno.ENOENT, errno.EDQUOT, errno.ENAMETOOLONG}
# Retention that lets a failed job be hidden by a `sweep` (so `restore` has work), and no sweeps of
# its own: every change to the store during a test is one the test asked for.
HOSTILE_CONFIG = """
sweep_interval = "1000d"
[retention]
failed = "0s"
[templates.media]
areas = { audio = "scratch", video = "scratch", output = "keep" }
quota = "1M"
max_files = 3
"""


# -- reading the mount --------------------------------------------------------------------------


def write_once(path: Path, data: bytes, offset: int | None = None) -> int:
    """One ``write()`` to ``path`` (``pwrite`` at ``offset`` when given): bytes written, or -errno."""
    fd = os.open(path, os.O_WRONLY)
    try:
        return os.write(fd, data) if offset is None else os.pwrite(fd, data, offset)
    except OSError as exc:
        return -exc.errno
    finally:
        os.close(fd)


def last_event(m: MountedWsfs) -> dict:
    lines = (m.mnt / ".wsfs" / "events").read_bytes().splitlines()
    return json.loads(lines[-1]) if lines else {"seq": 0}


def job_doc(m: MountedWsfs, job: str) -> dict:
    return json.loads((m.ws / job / ".job").read_bytes())


def jobs_listing(m: MountedWsfs) -> bytes:
    return (m.mnt / ".wsfs" / "jobs").read_bytes()


def job_counts(m: MountedWsfs) -> tuple:
    """Jobs by state, live jobs, bytes and files used (from .wsfs/status: O(1), not O(jobs))."""
    status = json.loads((m.mnt / ".wsfs" / "status").read_bytes())
    return status["jobs"], status["live_jobs"], status["used"]


def data_dir_listing(m: MountedWsfs) -> dict[str, list[str]]:
    return {root: sorted(os.listdir(m.data / root)) for root in ("jobs", "quarantine")}


def assert_alive(m: MountedWsfs) -> None:
    os.statvfs(m.mnt)  # always answered by the daemon itself: raises ENOTCONN if it died
    assert m.proc.poll() is None, f"the daemon exited with {m.proc.returncode}"


def assert_log_clean(m: MountedWsfs, every: int = 25) -> None:
    """No error in the daemon's log: checked every ``every`` inputs (the log only grows; the
    fixture checks it once more at the end)."""
    if m.inputs % every == 0:
        assert m.daemon_errors() == []


def assert_rejection_recorded(m: MountedWsfs, before_seq: int, result: int, via: str, job: str | None) -> None:
    event = last_event(m)
    assert event["seq"] > before_seq and event["kind"] == "rejected", event
    assert event["via"] == via and event.get("job") == job, event
    assert event["errno"] == errno.errorcode[-result], event
    assert event["reason"], event


def grammar_error(parse, data: bytes) -> WsfsError | None:
    try:
        parse(data)
    except WsfsError as exc:
        return exc
    return None


# -- strategies -----------------------------------------------------------------------------------

SEPARATORS = [" ", " ", " ", "  ", "\t", "\n", "\r\n", "\x00", "\x0b", "\x1b", "\x85", "\u2028", "\u00a0",
              "\u3000", ""]
STATE_WORDS = ["completed", "failed", "cancelled", "archived", "stage", "owner", "running", "crashed", "resume",
               "COMPLETED", "complete", "Completed", "fail", "stage:", "owner=1", "completed\x00"]
CONTROL_WORDS = ["create", "restore", "resume", "sweep", "doctor", "CREATE", "creat", "delete", "archive",
                 "dry-run", "repair", "create\u200b"]
PIDS = [str(os.getpid()), "1", "0", "-1", "+1", "01", "\u0663", "4194304", str(MAX_PID + 1), "1e3", "1.0",
        "99999999999999999999999", "0x10"]

words = st.one_of(
    st.text(max_size=24),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,140}", fullmatch=True),
    st.integers(-5, 1 << 23).map(str),
    st.sampled_from(PIDS),
    st.just("r" * 1100),
)


def assemble(head: str, parts: list[tuple[str, str]], tail: str, encoding: str) -> bytes:
    text = head + "".join(sep + word for sep, word in parts) + tail
    return text.encode(encoding, "ignore")


def commands(verbs: list[str], args) -> st.SearchStrategy[bytes]:
    """Near-misses of a grammar: a verb (or junk), separators of every kind, arguments, padding."""
    return st.builds(
        assemble,
        st.one_of(st.sampled_from(verbs), st.text(max_size=12)),
        st.lists(st.tuples(st.sampled_from(SEPARATORS), args), max_size=4),
        st.sampled_from(["", "\n", " \n", "\r\n", "\n\n", "\x00", " " * 4100]),
        st.sampled_from(["utf-8"] * 8 + ["utf-16", "latin-1"]),
    )


def padded(word: bytes) -> st.SearchStrategy[bytes]:
    """``word`` padded with spaces to either side of the 4 KiB limit."""
    return st.integers(4090, 4100).map(lambda n: word.ljust(n))


def payloads(verbs, args, valid: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=64), st.binary(min_size=4000, max_size=4200), commands(verbs, args),
        commands(verbs, args), commands(verbs, args), st.sampled_from(valid), padded(valid[0]),
        st.just(b"completed " + b"x" * (3 << 19)),  # split by the kernel into max_write pieces
    )


STATE_VALID = [b"completed", b"completed\n", b"failed boom\n", b"cancelled by the user", b"archived\n",
               b"stage converting\n", f"owner {os.getpid()}\n".encode(), b"owner 1"]
state_payloads = payloads(STATE_WORDS, words, STATE_VALID)


# -- .state ---------------------------------------------------------------------------------------


class StateTargets:
    """A running job and an ended one to aim at; replaced when a write ends or archives them."""

    def __init__(self, m: MountedWsfs):
        self.m = m
        self.made = 0
        self.jobs = {"running": self._new(), "ended": self._new(ended=True)}
        self.uses = {"running": 0, "ended": 0}

    def _new(self, ended: bool = False) -> str:
        self.made += 1
        job = f"st-{self.made}"
        os.mkdir(self.m.ws / job)
        if ended:
            assert write_once(self.m.ws / job / ".state", b"completed") == len(b"completed")
        return job

    def get(self, kind: str) -> str:
        job = self.jobs[kind]
        word = (self.m.ws / job / ".state").read_text() if (self.m.ws / job).exists() else "gone"
        wanted = "running\n" if kind == "running" else "completed\n"
        self.uses[kind] += 1
        if word != wanted or self.uses[kind] > 200:  # stages pile up in a record: start afresh now and then
            job = self.jobs[kind] = self._new(ended=kind == "ended")
            self.uses[kind] = 0
        return job


@pytest.fixture
def hostile_mount(tmp_path):
    """One mount for all the examples of a test (logging at INFO: thousands of errnos to come)."""
    print(replay(SEED))
    require_fuse()
    m = StressMount(tmp_path / "m", config=HOSTILE_CONFIG)
    m.inputs = 0  # counted by the tests: how many inputs the mount took
    try:
        yield m.start()
    finally:
        m.stop()
        if m.inputs:
            print(f"{m.inputs} inputs through one mount")
    assert m.daemon_errors() == []


@pytest.mark.mount
@stress(short=250, full=4000)
@given(data=state_payloads, kind=st.sampled_from(["running", "running", "ended"]),
       offset=st.one_of(st.none(), st.none(), st.integers(0, 1 << 40)))
def test_random_writes_to_state(hostile_mount, data, kind, offset):
    m = hostile_mount
    m.inputs += 1
    if not hasattr(m, "state_targets"):
        m.state_targets = StateTargets(m)
    job = m.state_targets.get(kind)
    before, before_seq = job_doc(m, job), last_event(m)["seq"]
    result = write_once(m.ws / job / ".state", data, offset)
    assert_alive(m)
    refused_by_grammar = grammar_error(parse_state_command, data)
    if not data:
        assert result == 0  # the kernel sends no empty write: nothing to refuse, nothing changed
        assert job_doc(m, job) == before and last_event(m)["seq"] == before_seq
    elif result < 0:
        assert -result in CLEAR_ERRNOS, errno.errorcode.get(-result, result)
        assert job_doc(m, job) == before
        assert_rejection_recorded(m, before_seq, result, ".state", job)
        if refused_by_grammar is None:  # well formed, refused by the job's state (or a PID that is gone)
            command = parse_state_command(data)
            assert -result == errno.EPERM or (-result == errno.EINVAL and command.verb == "owner"), command
        else:
            assert -result == errno.EINVAL
    else:
        assert result == len(data)
        assert refused_by_grammar is None, f"the daemon took what the grammar refuses: {refused_by_grammar}"
        command = parse_state_command(data)
        event = last_event(m)
        if command.verb == "transition" and command.target.value == "archived":
            assert not (m.ws / job).exists() and event["kind"] == "transition" and event["to"] == "archived"
            return
        after = job_doc(m, job)
        if command.verb == "transition":
            assert (after["state"], after["reason"], after["ending"]) == (command.target.value, command.reason, None)
        elif command.verb == "stage":
            assert after["stage"] == command.stage and after["stages"][-1]["name"] == command.stage
        else:
            assert after["owner"]["pid"] == command.pid
    assert_log_clean(m)


# -- .wsfs/control ----------------------------------------------------------------------------------

POOL = ["pool-run", "pool-failed", "pool-hidden", "pool-done"]
control_args = st.one_of(
    words, st.sampled_from(POOL), st.sampled_from(POOL), st.from_regex(JOB_ID_RE, fullmatch=True),
    st.builds(lambda k, v: f"{k}={v}",
              st.sampled_from(["template", "quota", "max_files", "owner", "bogus", "", "template=x"]),
              st.one_of(st.sampled_from(["default", "media", "nope", "10G", "0", "-1", "1.5K", "1e3", "9" * 30 + "P",
                                         "", "1M", "3"] + PIDS), st.text(max_size=8))),
)
CONTROL_VALID = [b"sweep", b"sweep dry-run\n", b"doctor", b"resume pool-failed", b"restore pool-hidden",
                 b"create made-by-hand template=media quota=10K max_files=2", b"create x1 owner=1"]
control_payloads = payloads(CONTROL_WORDS, control_args, CONTROL_VALID)


def make_pool(m: MountedWsfs) -> None:
    for job in POOL:
        os.mkdir(m.ws / job)
    assert write_once(m.ws / "pool-failed" / ".state", b"failed on purpose") > 0
    assert write_once(m.ws / "pool-hidden" / ".state", b"failed to be hidden") > 0
    assert write_once(m.ws / "pool-done" / ".state", b"completed") > 0
    assert write_once(m.mnt / ".wsfs" / "control", b"sweep") > 0  # failed = "0s": hides both failed jobs
    assert write_once(m.mnt / ".wsfs" / "control", b"restore pool-failed") > 0


@pytest.mark.mount
@stress(short=250, full=4000)
@given(data=control_payloads, offset=st.one_of(st.none(), st.integers(0, 1 << 40)))
def test_random_writes_to_control(hostile_mount, data, offset):
    m = hostile_mount
    m.inputs += 1
    if not getattr(m, "pool_made", False):
        make_pool(m)
        m.pool_made = True
    before_jobs, before_seq, before_tree = jobs_listing(m), last_event(m)["seq"], data_dir_listing(m)
    result = write_once(m.mnt / ".wsfs" / "control", data, offset)
    assert_alive(m)
    refused_by_grammar = grammar_error(parse_control_command, data)
    if not data:
        assert result == 0 and jobs_listing(m) == before_jobs and last_event(m)["seq"] == before_seq
    elif result < 0:
        assert -result in CLEAR_ERRNOS, errno.errorcode.get(-result, result)
        assert jobs_listing(m) == before_jobs, "a refused command changed the jobs"
        assert data_dir_listing(m) == before_tree, "a refused command changed the data dir"
        command = None if refused_by_grammar else parse_control_command(data)
        assert_rejection_recorded(m, before_seq, result, "control", command.job if command else None)
        if refused_by_grammar is not None:
            assert -result == errno.EINVAL
    else:
        assert result == len(data)
        assert refused_by_grammar is None, f"the daemon took what the grammar refuses: {refused_by_grammar}"
        command = parse_control_command(data)
        if command.verb == "create":
            record = job_doc(m, command.job)
            assert (record["state"], record["template"], record["uid"]) == ("running",
                                                                          command.option("template", "default"), 0)
        elif command.verb == "resume":
            assert job_doc(m, command.job)["state"] == "running"
        elif command.verb == "restore":
            assert job_doc(m, command.job)["location"] == "workspaces"
        elif command.verb in ("sweep", "doctor"):
            assert last_event(m)["kind"] == command.verb
    assert_log_clean(m)


# -- job ids --------------------------------------------------------------------------------------

SPECIAL_IDS = [".", "..", "...", "a\n", "\n", " a", "a ", "-a", ".a", "_a", "a" * 128, "a" * 129, "a" * 255,
               "a" * 256, "\u00e9" * 127, "\u00e9" * 128, "a" * 1024, "a" * 1025, "a" * 4000, "A.b_c-9", "0",
               "a\u0301", "\ufeffa", "a\u200b", "CON", "a:b", "a*b", "~", "$HOME", "a\\b", b"\xff", b"a\x80",
               b"\xc0\xaf", b"\xed\xa0\x80"]
id_names = st.one_of(
    st.from_regex(JOB_ID_RE, fullmatch=True),
    st.from_regex(JOB_ID_RE, fullmatch=True).map(lambda s: s + "\n"),
    st.text(min_size=1, max_size=300),
    st.binary(min_size=1, max_size=300),
    st.sampled_from(SPECIAL_IDS),
)


@pytest.mark.mount
@stress(short=250, full=4000)
@given(name=id_names, reuse=st.one_of(st.none(), st.none(), st.none(), st.integers(0, 1 << 20)),
       mode=st.one_of(st.just(0o755), st.integers(0, 0o7777)))
def test_random_job_ids_to_mkdir(hostile_mount, name, reuse, mode):
    m = hostile_mount
    used: list[str] = m.__dict__.setdefault("used_ids", [])
    if reuse is not None and used:  # an id taken earlier in this run (drawn as a number: hypothesis
        name = used[reuse % len(used)]  # replays examples, so what it draws cannot depend on the run)
    raw = name if isinstance(name, bytes) else name.encode("utf-8", "surrogateescape")
    assume(raw and b"/" not in raw and b"\0" not in raw)
    m.inputs += 1
    text = raw.decode("utf-8", "surrogateescape")
    valid = JOB_ID_RE.fullmatch(text) is not None
    before_jobs, before_tree = job_counts(m), data_dir_listing(m)
    try:
        os.mkdir(os.path.join(os.fsencode(m.ws), raw), mode)
        result = 0
    except OSError as exc:
        result = -exc.errno
    assert_alive(m)
    if valid and text not in used:
        assert result == 0, f"a good id was refused: {errno.errorcode.get(-result)}"
        used.append(text)
        record = job_doc(m, text)
        assert (record["id"], record["state"]) == (text, "running")
        assert text in os.listdir(m.data / "jobs")
        return
    if valid or text in (".", ".."):
        assert result == -errno.EEXIST
    else:
        assert result in (-errno.EINVAL, -errno.ENAMETOOLONG), errno.errorcode.get(-result, result)
    assert job_counts(m) == before_jobs and data_dir_listing(m) == before_tree
    assert_log_clean(m)


# -- configs --------------------------------------------------------------------------------------


def toml_key(key: str) -> str:
    if key and all(c.isascii() and (c.isalnum() or c in "_-") for c in key):
        return key
    return toml_string(key)


def toml_string(text: str) -> str:
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def toml_value(value) -> str:
    """A Python value as a TOML value (nested tables inline), the way a hand-written file might hold it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"


def toml_document(config: dict) -> str:
    return "".join(f"{toml_key(k)} = {toml_value(v)}\n" for k, v in config.items())


def mostly(valid, junk):
    return st.one_of(valid, valid, valid, junk)


scalars = st.one_of(st.booleans(), st.integers(-(1 << 70), 1 << 70), st.floats(), st.text(max_size=10))
durations = mostly(st.one_of(st.sampled_from(["7d", "24h", "90s", "never", "0s", "1ms", "2w", "1000d"]),
                             st.integers(0, 10 ** 9), st.floats(0, 10 ** 6)),
                   st.one_of(scalars, st.sampled_from(["-1s", "nan", "inf", "1e300d", "9" * 400 + "s", "365000.1d",
                                                       "never ", "NEVER", "", 10 ** 30, 1e-300, -0.0])))
sizes = mostly(st.one_of(st.sampled_from(["10G", "512M", "0", "1.5K", "1", "100"]), st.integers(0, 1 << 40)),
               st.one_of(scalars, st.sampled_from(["-1", "1e3", "9223372036854775808", "8191P", "1 G", "1GiB",
                                                   (1 << 63), (1 << 64), 10 ** 30])))
counts = mostly(st.integers(0, 10 ** 6), st.one_of(scalars, st.sampled_from([(1 << 63) - 1, 1 << 63, 1 << 64,
                                                                              10 ** 30, -1, 1.5, "3"])))
area_kinds = mostly(st.sampled_from(["keep", "scratch", "input"]), st.one_of(scalars, st.just("KEEP")))
area_names = mostly(st.sampled_from(["audio", "video", "output", "temp", "input", "in"]),
                    st.one_of(st.text(max_size=6), st.sampled_from([".hidden", "receipt.json", "a/b", "..", "",
                                                                    ".state", ".job", "a" * 129])))
retentions = st.dictionaries(mostly(st.sampled_from(["completed", "failed", "cancelled", "crashed", "grace"]),
                                    st.sampled_from(["running", "archived", "x"])), durations, max_size=5)
templates = st.dictionaries(
    mostly(st.sampled_from(["media", "default", "light", "a.b"]), st.text(max_size=5)),
    mostly(st.fixed_dictionaries({}, optional={
        "areas": mostly(st.dictionaries(area_names, area_kinds, min_size=1, max_size=4), scalars),
        "retention": retentions, "quota": sizes, "max_files": counts,
        "bogus": scalars}), scalars),
    max_size=3,
)
# Not generated: publish targets and on_* hooks (config.py), which by design run commands and write
# where the config says; a random one would do that on this machine.
structured_configs = st.fixed_dictionaries({}, optional={
    "sweep_interval": durations,
    "on_crash": mostly(st.sampled_from(["quarantine", "resume"]), st.one_of(scalars, st.just("Resume"))),
    "min_free": mostly(st.one_of(sizes, st.sampled_from(["5%", "0%", "99%", "12.5%"])),
                       st.sampled_from(["100%", "-5%", "nan%", "1e3%", "%", "5 %", "inf%"])),
    "max_jobs": counts, "quota": sizes, "max_files": counts,
    "retention": mostly(retentions, scalars), "templates": mostly(templates, scalars),
    "unknown_key": scalars,
})
# Every value valid: these mount, and each of their templates makes and ends a job.
valid_configs = st.fixed_dictionaries({}, optional={
    "sweep_interval": st.sampled_from(["1000d", "60s", "5m"]),
    "on_crash": st.sampled_from(["quarantine", "resume"]),
    "min_free": st.sampled_from(["5%", "0%", "1M", "0"]),
    "max_jobs": st.integers(0, 10 ** 6), "quota": st.sampled_from(["0", "1", "1500", "1M", "10G", 0, 1 << 62]),
    "max_files": st.integers(0, 5),
    "retention": st.dictionaries(st.sampled_from(["completed", "failed", "cancelled", "crashed", "grace"]),
                                 st.sampled_from(["7d", "0s", "never", "1ms", 0, 3600]).filter(bool), max_size=5),
    "templates": st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9._-]{0,10}", fullmatch=True),
        st.fixed_dictionaries({"areas": st.dictionaries(st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True),
                                                        st.sampled_from(["keep", "scratch", "input"]),
                                                        min_size=1, max_size=4)},
                              optional={"quota": st.sampled_from(["0", "100", "1M"]), "max_files": st.integers(0, 3)}),
        max_size=3),
})
config_texts = st.one_of(
    valid_configs.map(toml_document), valid_configs.map(toml_document),
    structured_configs.map(toml_document), structured_configs.map(toml_document), st.text(max_size=200),
    st.binary(max_size=100).map(lambda b: b.decode("latin-1")),
    st.sampled_from(["[templates.media]\nareas = {}\n", "templates = 1\n[templates.x]\n", "a = \n",
                     "[retention]\nfailed = \"1d\"\n[retention]\n", "\ufeffmax_jobs = 1\n", "max_jobs = 1\x00\n"]),
)


class ConfigMount:
    """``wsfs mount --foreground --config FILE`` on a data dir shared by every example."""

    def __init__(self, base: Path):
        self.mnt, self.data, self.config = base / "mnt", base / "data", base / "wsfs.toml"
        self.mnt.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.jobs = self.tried = self.mounted = 0

    def start(self) -> tuple[int | None, str]:
        """None and "" once mounted, or the exit status and stderr of a refusal."""
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.log = open(self.mnt.parent / "daemon.err", "w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "wsfs", "mount", str(self.mnt), "--data", str(self.data),
                                      "--config", str(self.config), "--foreground"],
                                     stdout=subprocess.DEVNULL, stderr=self.log, env=env, cwd=str(REPO))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code, self.proc = self.proc.returncode, None
                self.log.seek(0)
                return code, self.log.read()
            if is_mounted(self.mnt):
                try:
                    json.loads((self.mnt / ".wsfs" / "status").read_text())
                    return None, ""
                except (OSError, ValueError):
                    pass
            time.sleep(0.02)
        raise AssertionError("the mount did not come up within 30 s")

    def stop(self) -> tuple[int, str]:
        """Unmount; the daemon's exit status and stderr."""
        if self.proc is None:
            return 0, ""
        unmount = ""
        try:
            unmount = subprocess.run(["fusermount3", "-u", str(self.mnt)], capture_output=True, text=True).stderr
            if is_mounted(self.mnt):  # busy for a moment (as conftest's mounts: detach, it ends when free)
                subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)
            try:
                code = self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait()
                unmount += "\n(the daemon did not exit within 60 s of the unmount: killed)"
        finally:
            if is_mounted(self.mnt):
                subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait()
            self.proc = None
        self.log.seek(0)
        return code, self.log.read() + unmount

    def exercise(self) -> None:
        """A job per template, a file in each area, then completed: clear errnos, never EIO."""
        ok_errnos = {errno.EDQUOT, errno.ENOSPC}
        for template in load_config(str(self.config)).templates:
            self.jobs += 1
            job = f"cfg-{self.jobs}"
            result = write_once(self.mnt / ".wsfs" / "control", f"create {job} template={template}".encode())
            if result < 0:
                assert -result in ok_errnos, (template, errno.errorcode.get(-result))
                continue
            for area in job_doc_at(self.mnt, job)["areas"]:
                try:
                    (self.mnt / "workspaces" / job / area / "f").write_bytes(b"x" * 2000)
                except OSError as exc:
                    assert exc.errno in ok_errnos, (template, area, exc)
            result = write_once(self.mnt / "workspaces" / job / ".state", b"completed")
            assert result == len(b"completed"), errno.errorcode.get(-result)
        os.statvfs(self.mnt)


def job_doc_at(mnt: Path, job: str) -> dict:
    return json.loads((mnt / "workspaces" / job / ".job").read_bytes())


@pytest.fixture
def config_mount(tmp_path):
    print(replay(SEED))
    require_fuse()
    cm = ConfigMount(tmp_path)
    try:
        yield cm
    finally:
        cm.stop()
        if cm.tried:
            print(f"{cm.tried} config files, {cm.mounted} of them mounted")


@pytest.mark.mount
@stress(short=25, full=400)
@given(text=config_texts)
def test_random_configs_to_mount(config_mount, text):
    cm = config_mount
    cm.config.write_text(text, encoding="utf-8", errors="surrogateescape")
    cm.tried += 1
    code, stderr = cm.start()
    assert "Traceback" not in stderr, stderr
    if code is not None:
        assert code == 78, f"exit {code}: {stderr}"  # EX_CONFIG: the units never restart on it
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"wsfs: bad config, not mounted: {cm.config}: "), stderr
        return
    cm.mounted += 1
    try:
        cm.exercise()
    finally:
        code, stderr = cm.stop()
    assert code == 0, stderr
    problems = [ln for ln in stderr.splitlines() if " ERROR " in ln or " CRITICAL " in ln or "Traceback" in ln]
    assert not problems, stderr


# -- regressions: what the suites above found ---------------------------------------------------


@pytest.mark.parametrize("toml", ["max_files = 99999999999999999999", "max_jobs = 18446744073709551616",
                                  "quota = 9223372036854775808",
                                  "[templates.m]\nareas = { o = \"keep\" }\nquota = 100000000000000000000000",
                                  "[templates.m]\nareas = { o = \"keep\" }\nmax_files = 9223372036854775808"])
def test_counts_and_sizes_past_64_bits_are_refused_at_mount(config_mount, toml):
    """tomllib reads integers of any size; one past 2**63-1 used to mount and then fail every mkdir
    with EIO (msgpack OverflowError storing the record).  Now: exit 78 naming the file and the key."""
    cm = config_mount
    cm.config.write_text(toml + "\n")
    code, stderr = cm.start()
    assert code == 78, stderr
    assert stderr.startswith(f"wsfs: bad config, not mounted: {cm.config}: ") and "Traceback" not in stderr
    assert ("max_files" in stderr or "max_jobs" in stderr or "quota" in stderr), stderr


@pytest.mark.mount
def test_the_largest_count_still_mounts_and_makes_jobs(config_mount):
    cm = config_mount
    cm.config.write_text(f"max_files = {(1 << 63) - 1}\nquota = {(1 << 63) - 1}\n")
    code, stderr = cm.start()
    assert code is None, stderr
    try:
        cm.exercise()
    finally:
        code, stderr = cm.stop()
    assert code == 0 and "Traceback" not in stderr, stderr


@pytest.mark.mount
def test_names_that_are_not_utf8_are_enoent_not_eio(hostile_mount):
    """A lookup of a name that is not UTF-8 under workspaces/ or quarantine/ reached the store's key
    encoding (UnicodeEncodeError: a logged traceback and EIO).  It names no job: ENOENT, and mkdir EINVAL."""
    m = hostile_mount
    for top in (m.ws, m.mnt / "quarantine"):
        for raw in (b"\xff", b"a\x80b", b"\xed\xa0\x80", "\u00e9".encode("latin-1")):
            path = os.path.join(os.fsencode(top), raw)
            with pytest.raises(FileNotFoundError):
                os.stat(path)
            with pytest.raises(FileNotFoundError):
                os.stat(os.path.join(path, b".state"))
    with pytest.raises(OSError) as info:
        os.mkdir(os.path.join(os.fsencode(m.ws), b"\xff"))
    assert info.value.errno == errno.EINVAL
    assert_alive(m)
    assert m.daemon_errors() == []


def _path_of(length: int, area: str = "output") -> str:
    """An area path of exactly ``length`` bytes: dirs of 200, then a file name."""
    parts, left = [area], length - len(area)
    while left > 201 + 2:
        parts.append("d" * 200)
        left -= 201
    parts.append("f" * (left - 1))
    path = "/".join(parts)
    assert len(path.encode()) == length
    return path


@pytest.mark.mount
def test_paths_past_the_old_manifest_key_limit_work_and_the_mount_stays(hostile_mount):
    """An LMDB key is at most 511 bytes: job id, NUL, area path.  Schema 1 keyed paths as they
    are, so names past that were refused (ENAMETOOLONG), where the disk takes them.  Schema 2 keys
    long paths by a cut and a hash: every way of making a name works one byte past the old limit
    and far past it, and the receipt and the manifest list them."""
    m = hostile_mount
    job = "L" * 40
    os.mkdir(m.ws / job)
    room = 511 - len(job) - 1
    fits, past = _path_of(room), _path_of(room + 1)
    for rel in (fits, past):
        os.makedirs((m.ws / job / rel).parent, exist_ok=True)
    (m.ws / job / fits).write_bytes(b"at the old limit\n")
    where = m.ws / job / past
    for make, undo in ((lambda: where.write_bytes(b"x"), where.unlink), (lambda: os.mkdir(where), where.rmdir),
                       (lambda: os.mkfifo(where), where.unlink), (lambda: os.symlink("x", where), where.unlink),
                       (lambda: os.link(m.ws / job / fits, where), where.unlink)):
        make()
        assert os.path.lexists(where)
        undo()
    os.rename(m.ws / job / fits, where)
    holder = where.parent
    os.rename(holder, holder.with_name(holder.name + "x"))
    moved = "/".join(past.split("/")[:-2] + [holder.name + "x", past.split("/")[-1]])
    assert_alive(m)
    sh(f"echo completed > workspaces/{job}/.state", cwd=m.mnt)
    receipt = json.loads((m.ws / job / "receipt.json").read_text())
    assert [o["path"] for o in receipt["outputs"]] == [moved]
    assert [json.loads(line)["path"] for line in (m.ws / job / ".manifest").read_text().splitlines()] == [moved]
    assert m.daemon_errors() == []


def test_the_manifest_writer_stores_paths_of_any_length(core):
    """Schema 2: what schema 1 could not key (600 bytes, and past PATH_MAX) is an entry like any other."""
    core.create_job("J", 0, 0)
    fd = core.tree.open("jobs", "J/output/f", os.O_WRONLY | os.O_CREAT, 0o644)
    st = os.fstat(fd)
    os.close(fd)
    long_ones = ["output/" + "x" * 600, "output/" + "/".join(["d" * 250] * 20) + "/f"]
    for path in long_ones:
        core.manifest.put("J", path, st)
    core.manifest.put("J", "output/f", st)
    core.manifest.flush()
    assert [path for path, _entry in core.manifest_entries("J")] == [long_ones[1], "output/f", long_ones[0]]
    assert core.records.require("J").usage["files"] == 3
