"""The ``.state`` and ``.wsfs/control`` grammar (control.py, docs/spec.md §5, §10): no mount, no store."""

from __future__ import annotations

import errno
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsfs.core.control import (
    MAX_COMMAND_BYTES,
    MAX_PID,
    MAX_REASON_CHARS,
    Command,
    parse_control_command,
    parse_state_command,
)
from wsfs.core.errors import BadCommandError, BadJobIdError
from wsfs.core.model import JobState

GRAMMAR_ERRORS = (BadCommandError, BadJobIdError)
STATE_VERBS = {"transition", "stage", "owner"}
CONTROL_VERBS = {"create", "restore", "resume", "sweep", "doctor"}


def rejected(parse, data: bytes) -> Exception:
    with pytest.raises(GRAMMAR_ERRORS) as info:
        parse(data)
    assert info.value.errno == errno.EINVAL
    assert str(info.value), "a rejection says why"
    return info.value


# -- .state: accepted forms -----------------------------------------------------------


@pytest.mark.parametrize("data, expected", [
    (b"completed", Command("transition", target=JobState.COMPLETED)),
    (b"completed\n", Command("transition", target=JobState.COMPLETED)),
    (b"  completed \r\n", Command("transition", target=JobState.COMPLETED)),
    (b"failed", Command("transition", target=JobState.FAILED)),
    (b"failed disk full\n", Command("transition", target=JobState.FAILED, reason="disk full")),
    (b"failed   two   spaces", Command("transition", target=JobState.FAILED, reason="two spaces")),
    (b"cancelled", Command("transition", target=JobState.CANCELLED)),
    (b"cancelled by the user", Command("transition", target=JobState.CANCELLED, reason="by the user")),
    ("failed caf\u00e9 \u2713".encode(), Command("transition", target=JobState.FAILED, reason="caf\u00e9 \u2713")),
    (b"archived", Command("transition", target=JobState.ARCHIVED)),
    (b"archived\n", Command("transition", target=JobState.ARCHIVED)),
    (b"stage preparing", Command("stage", stage="preparing")),
    (b"stage track-07.flac:2\n", Command("stage", stage="track-07.flac:2")),
    (b"stage " + b"s" * 128, Command("stage", stage="s" * 128)),
    (b"stage encode drop=audio", Command("stage", stage="encode", areas=("audio",))),
    (b"stage mux drop=audio drop=video drop=audio", Command("stage", stage="mux", areas=("audio", "video"))),
    (b"drop temp", Command("drop", areas=("temp",))),
    (b"drop temp\n", Command("drop", areas=("temp",))),
    (b"owner 1", Command("owner", pid=1)),
    (b"owner 4242\n", Command("owner", pid=4242)),
    (f"owner {MAX_PID}".encode(), Command("owner", pid=MAX_PID)),
])
def test_state_command_accepted(data, expected):
    assert parse_state_command(data) == expected


def test_state_command_accepts_bytearray_and_the_full_4k():
    assert parse_state_command(bytearray(b"completed")).target == JobState.COMPLETED
    padded = b"completed" + b" " * (MAX_COMMAND_BYTES - len(b"completed"))
    assert len(padded) == MAX_COMMAND_BYTES
    assert parse_state_command(padded).target == JobState.COMPLETED


def test_reason_at_the_limit_is_accepted_and_one_more_is_not():
    ok = parse_state_command(b"failed " + b"r" * MAX_REASON_CHARS)
    assert ok.reason == "r" * MAX_REASON_CHARS
    rejected(parse_state_command, b"failed " + b"r" * (MAX_REASON_CHARS + 1))


# -- .state: rejections ------------------------------------------------------------------


@pytest.mark.parametrize("data", [
    b"",
    b" ",
    b"\n",
    b" \t\r\n ",
    b"done",
    b"Completed",
    b"COMPLETED",
    b"running",
    b"crashed",
    b"resume",
    b"complete",
    b"completedx",
    b"completed" + b" " * MAX_COMMAND_BYTES,        # over 4 KiB, however harmless
    b"x" * (MAX_COMMAND_BYTES + 1),
    b"\xff\xfe",                                      # not UTF-8
    b"failed \xc3",                                   # truncated UTF-8
    b"failed \xed\xa0\x80",                           # an encoded surrogate
    b"failed a\nb",                                   # embedded newline
    b"completed\ncompleted",
    b"failed a\rb",
    b"failed a\tb",
    b"failed a\x00b",
    b"completed\x00",
    b"failed \x1b[31mred",                            # terminal escape
    b"failed a\x7fb",
    "failed a\u009bb".encode(),                       # C1 control (CSI)
    "failed \u0085x".encode() + b"\x07",
    b"archived x",
    b"archived now please",
    b"stage",
    b"stage ",
    b"stage a b",
    b"stage -x",
    b"stage .x",
    b"stage _x",
    b"stage a/b",
    b"stage a*b",
    b"stage " + b"s" * 129,
    "stage caf\u00e9".encode(),
    b"stage encode drop",
    b"stage encode drop=",
    b"stage encode keep=audio",
    b"stage encode drop=../x",
    b"drop",
    b"drop temp video",
    b"drop ../temp",
    b"drop .x",
    b"owner",
    b"owner 1 2",
    b"owner 0",
    b"owner -1",
    b"owner 00",
    b"owner +5",
    b"owner 1.0",
    b"owner 0x10",
    b"owner abc",
    b"owner 12a",
    f"owner {MAX_PID + 1}".encode(),
    b"owner 99999999999999999999999999999999",
    "owner \u0661\u0662".encode(),                    # Arabic-Indic digits
    "owner \uff11\uff12".encode(),                    # full-width digits
    "owner \u00b2".encode(),                          # superscript two
    b"create job1",                                   # a control command, not a .state one
    b"sweep",
])
def test_state_command_rejected(data):
    rejected(parse_state_command, data)


def test_rejections_are_bad_command_errors_with_einval():
    exc = rejected(parse_state_command, b"bogus")
    assert isinstance(exc, BadCommandError)
    assert "bogus" in str(exc)
    assert "4096" in str(rejected(parse_state_command, b"x" * 5000))
    assert "PID" in str(rejected(parse_state_command, b"owner 0"))


def test_non_bytes_are_refused():
    with pytest.raises(BadCommandError):
        parse_state_command("completed")  # type: ignore[arg-type]
    with pytest.raises(BadCommandError):
        parse_control_command(None)  # type: ignore[arg-type]


# -- .wsfs/control -----------------------------------------------------------------------


@pytest.mark.parametrize("data, expected", [
    (b"create job1", Command("create", job="job1")),
    (b"create job1\n", Command("create", job="job1")),
    (b"create a", Command("create", job="a")),
    (b"create " + b"j" * 128, Command("create", job="j" * 128)),
    (b"create my.job-2_x template=media", Command("create", job="my.job-2_x", options=(("template", "media"),))),
    (b"create j quota=10G", Command("create", job="j", options=(("quota", 10 << 30),))),
    (b"create j quota=512", Command("create", job="j", options=(("quota", 512),))),
    (b"create j quota=1.5M", Command("create", job="j", options=(("quota", 3 << 19),))),
    (b"create j quota=0", Command("create", job="j", options=(("quota", 0),))),
    (b"create j max_files=100", Command("create", job="j", options=(("max_files", 100),))),
    (b"create j max_files=0", Command("create", job="j", options=(("max_files", 0),))),
    (b"create j owner=77", Command("create", job="j", options=(("owner", 77),))),
    (b"create j template=t quota=1K max_files=3 owner=9",
     Command("create", job="j", options=(("template", "t"), ("quota", 1024), ("max_files", 3), ("owner", 9)))),
    (b"restore job1", Command("restore", job="job1")),
    (b"resume job1\n", Command("resume", job="job1")),
    (b"sweep", Command("sweep")),
    (b"sweep dry-run", Command("sweep", dry_run=True)),
    (b"  sweep   dry-run \n", Command("sweep", dry_run=True)),
    (b"doctor", Command("doctor")),
    (b"doctor repair\n", Command("doctor", repair=True)),
])
def test_control_command_accepted(data, expected):
    assert parse_control_command(data) == expected


def test_command_option_lookup():
    cmd = parse_control_command(b"create j quota=2K")
    assert cmd.option("quota") == 2048
    assert cmd.option("template", "default") == "default"
    assert cmd.option("max_files") is None


@pytest.mark.parametrize("data", [
    b"",
    b"   \n",
    b"create",
    b"create ",
    b"Create job1",
    b"make job1",
    b"completed",                                    # a .state command, not a control one
    b"sweep now",
    b"sweep dry-run extra",
    b"sweep --dry-run",
    b"doctor now",
    b"doctor repair x",
    b"doctor --repair",
    b"restore",
    b"restore a b",
    b"resume",
    b"resume a b",
    b"x" * (MAX_COMMAND_BYTES + 1),
    b"create job1 " + b"q" * MAX_COMMAND_BYTES,
    b"\x80create job1",
    b"create job1\nresume job1",
    b"create job\x00x",
])
def test_control_command_rejected(data):
    rejected(parse_control_command, data)


@pytest.mark.parametrize("job", [
    "-x", ".x", "_x", "..", ".", "a/b", "caf\u00e9", "j" * 129, "\u0661",
])
@pytest.mark.parametrize("verb", ["create", "restore", "resume"])
def test_control_command_bad_job_id(verb, job):
    exc = rejected(parse_control_command, f"{verb} {job}".encode())
    assert isinstance(exc, BadJobIdError)


@pytest.mark.parametrize("option", [
    "colour=red",                       # unknown option
    "template",                         # no '='
    "quota",
    "=5",
    "Template=t",
    "template=",
    "template=-t",
    "template=.t",
    "template=a/b",
    "template=caf\u00e9",
    "template=" + "t" * 129,
    "quota=",
    "quota=abc",
    "quota=-1",
    "quota=10X",
    "quota=1e3",
    "quota=G",
    "quota=10G10",
    "quota=" + "9" * 400,               # a float overflow must still be a clean EINVAL
    "quota=99999999999P",               # beyond any disk and beyond a 64-bit count
    "quota=\u0661\u0660G",              # Arabic-Indic digits
    "max_files=",
    "max_files=x",
    "max_files=-1",
    "max_files=1.5",
    "max_files=+3",
    "max_files=\u0661\u0662",           # Arabic-Indic digits
    "max_files=\u00b2",
    "max_files=" + "9" * 40,            # beyond a 64-bit count
    "owner=0",
    "owner=-1",
    "owner=x",
    f"owner={MAX_PID + 1}",
    "owner=\uff11",
])
def test_create_option_rejected(option):
    exc = rejected(parse_control_command, f"create job1 {option}".encode())
    assert isinstance(exc, BadCommandError)


def test_create_option_error_names_the_option():
    assert "quota" in str(rejected(parse_control_command, b"create j quota=lots"))
    assert "colour" in str(rejected(parse_control_command, b"create j colour=red"))


# -- properties --------------------------------------------------------------------------


def render(cmd: Command) -> bytes:
    """The canonical text of a parsed command; parsing it must give the command back."""
    if cmd.verb == "transition":
        return " ".join(filter(None, [cmd.target.value, cmd.reason])).encode()
    if cmd.verb == "stage":
        return f"stage {cmd.stage}".encode()
    if cmd.verb == "owner":
        return f"owner {cmd.pid}".encode()
    if cmd.verb == "create":
        return " ".join(["create", cmd.job] + [f"{k}={v}" for k, v in cmd.options]).encode()
    if cmd.verb in ("restore", "resume"):
        return f"{cmd.verb} {cmd.job}".encode()
    if cmd.verb == "sweep":
        return b"sweep dry-run" if cmd.dry_run else b"sweep"
    if cmd.verb == "doctor":
        return b"doctor repair" if cmd.repair else b"doctor"
    raise AssertionError(f"unknown verb {cmd.verb}")


WORDS = ["completed", "failed", "cancelled", "archived", "stage", "owner", "create", "restore", "resume",
         "sweep", "dry-run", "template=", "quota=", "max_files=", "owner=", "job1", "a.b-c", "7", "0",
         "-1", "10G", "1.5K", "x" * 130, "\u0661", "\x00", "\n", "\t", "\x9b", "..", "a/b", "=", " "]
word_commands = st.lists(
    st.one_of(st.sampled_from(WORDS), st.text(max_size=6), st.integers(0, MAX_PID * 2).map(str)),
    min_size=0, max_size=6,
).map(lambda words: " ".join(words).encode("utf-8", "surrogatepass"))
ids = st.one_of(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,12}", fullmatch=True), st.sampled_from(WORDS))
numbers = st.one_of(st.integers(-2, MAX_PID + 2).map(str), st.sampled_from(["0", "00", "+1", "1.5", "\u0661"]))
sizes = st.one_of(st.from_regex(r"[0-9]{1,4}(\.[0-9])?[KMGTPkmgtp]?(i?B)?", fullmatch=True), st.sampled_from(WORDS))
options = st.one_of(
    ids.map("template={}".format), sizes.map("quota={}".format), numbers.map("max_files={}".format),
    numbers.map("owner={}".format), st.sampled_from(WORDS),
)
grammar_commands = st.one_of(
    st.tuples(st.sampled_from(["completed", "failed", "cancelled"]), st.text(max_size=30)).map(" ".join),
    st.sampled_from(["archived", "archived x", "sweep", "sweep dry-run", "sweep x", "doctor", "doctor repair",
                     "doctor x"]),
    ids.map("stage {}".format),
    numbers.map("owner {}".format),
    st.tuples(ids, st.lists(options, max_size=4)).map(lambda t: " ".join(["create", t[0], *t[1]])),
    st.tuples(st.sampled_from(["restore", "resume"]), ids).map(" ".join),
).flatmap(lambda text: st.tuples(st.sampled_from(["", " ", "\n", "\t"]), st.just(text),
                                 st.sampled_from(["", "\n", " \n", "\r\n", "\x00"])).map("".join))
any_bytes = st.one_of(
    st.binary(max_size=64), word_commands, st.binary(min_size=4090, max_size=4100),
    grammar_commands.map(lambda text: text.encode("utf-8", "surrogatepass")),
)


def check_accepted(cmd: Command, parse, verbs) -> None:
    assert isinstance(cmd, Command)
    assert cmd.verb in verbs
    assert parse(render(cmd)) == cmd
    for text in (cmd.reason, cmd.stage, cmd.job):
        if text is not None:
            assert text == text.strip() and text
            assert not any(unicodedata.category(c) == "Cc" for c in text), text
    if cmd.pid is not None:
        assert 0 < cmd.pid <= MAX_PID
    if cmd.verb == "transition":
        assert cmd.target in {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.ARCHIVED}
    for name, value in cmd.options:
        assert name in {"template", "quota", "max_files", "owner"}
        if name in ("quota", "max_files"):
            assert isinstance(value, int) and 0 <= value < 1 << 63


@pytest.mark.parametrize("parse, verbs", [(parse_state_command, STATE_VERBS), (parse_control_command, CONTROL_VERBS)],
                         ids=["state", "control"])
@settings(max_examples=600, deadline=None)
@given(data=any_bytes)
def test_the_grammars_never_raise_anything_else(parse, verbs, data):
    try:
        cmd = parse(data)
    except GRAMMAR_ERRORS as exc:
        assert exc.errno == errno.EINVAL
        return
    check_accepted(cmd, parse, verbs)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["failed", "cancelled"]), st.text(min_size=1, max_size=200))
def test_any_reason_is_either_refused_or_kept_as_normalised_text(word, reason):
    data = f"{word} {reason}".encode("utf-8", "surrogatepass")
    try:
        cmd = parse_state_command(data)
    except BadCommandError:
        return
    check_accepted(cmd, parse_state_command, STATE_VERBS)
    assert cmd.reason == (" ".join(reason.split()) or None)
