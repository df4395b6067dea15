"""The grammar of ``.state`` and ``.wsfs/control`` writes (docs/spec.md §5, §10).  Pure.

One command per ``write()``: UTF-8, at most 4 KiB, one line, surrounding
whitespace ignored.  ``parse_state_command`` and ``parse_control_command``
return a ``Command`` or raise ``BadCommandError`` (``EINVAL``); they never
look at a job, so "allowed now?" is the lifecycle's question, not theirs.
"""

from __future__ import annotations

import dataclasses
import re
import typing
import urllib.parse

from .errors import BadCommandError
from .model import JOB_ID_RE, STAGE_RE, JobState, validate_job_id
from .units import parse_duration, parse_size

MAX_COMMAND_BYTES = 4096
#: ``note JOB TEXT`` carries a whole reason (percent-encoded, newlines and all) into the events.
MAX_NOTE_BYTES = 256 * 1024
MAX_NOTE_CHARS = 64 * 1024
_NOTE_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # control characters but tab and newline
MAX_REASON_CHARS = 1024
MAX_PID = 1 << 22  # the kernel's ceiling for pid_max

_TOKEN_RE = STAGE_RE
# A reason is free text on one line: no control characters at all (C0, DEL and C1,
# whose CSI \x9b would reach a terminal through `wsfs events`).
_CONTROL_CHARS_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")

ENDING_WORDS = {"completed": JobState.COMPLETED, "failed": JobState.FAILED, "cancelled": JobState.CANCELLED}


@dataclasses.dataclass(frozen=True)
class Command:
    """A parsed command: ``verb`` plus its arguments."""

    verb: str
    job: str | None = None
    target: JobState | None = None
    reason: str | None = None
    stage: str | None = None
    pid: int | None = None
    options: tuple[tuple[str, object], ...] = ()
    dry_run: bool = False
    repair: bool = False
    retry: bool = False  # publish: start a failed (or finished) publish over
    source: str | None = None  # clone: the job copied from
    seconds: float | None = None  # extend: the lease's extension
    areas: tuple[str, ...] = ()  # drop AREA, stage NAME drop=AREA: scratch areas emptied now
    who: str | None = None  # share, unshare: u:UID or g:GID
    access: str | None = None  # share: r or rw

    @property
    def job_id(self) -> str:
        """The job a control command names (every verb but sweep, doctor and reload has one)."""
        if self.job is None:
            raise BadCommandError(f"{self.verb}: no job named")
        return self.job

    def option(self, name: str, default=None):
        return dict(self.options).get(name, default)

    def labels(self) -> dict[str, str]:
        return dict(typing.cast(tuple[str, str], value) for name, value in self.options if name == "label")


def _decode_line(data: bytes, limit: int = MAX_COMMAND_BYTES) -> str:
    if not isinstance(data, (bytes, bytearray)):
        raise BadCommandError("a command is bytes")
    if len(data) > limit:
        raise BadCommandError(f"command too long: {len(data)} bytes, at most {limit}")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise BadCommandError("command is not UTF-8 text") from None
    text = text.strip()
    if not text:
        raise BadCommandError("empty command")
    if _CONTROL_CHARS_RE.search(text):
        raise BadCommandError("a command is one line of text without control characters")
    return text


def _reason(words: list[str]) -> str | None:
    reason = " ".join(words) or None
    if reason is not None and len(reason) > MAX_REASON_CHARS:
        raise BadCommandError(f"reason too long: at most {MAX_REASON_CHARS} characters")
    return reason


def _pid(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 0 < int(text) <= MAX_PID:
        raise BadCommandError(f"bad PID {text!r}: a process id is a positive integer")
    return int(text)


def parse_state_command(data: bytes) -> Command:
    """Parse a ``.state`` write: a job's own commands (docs/spec.md §5)."""
    text = _decode_line(data)
    verb, *rest = text.split()
    if verb in ENDING_WORDS:
        return Command("transition", target=ENDING_WORDS[verb], reason=_reason(rest))
    if verb == "archived":
        if rest:
            raise BadCommandError("'archived' takes no argument")
        return Command("transition", target=JobState.ARCHIVED)
    if verb == "stage":
        if not rest or not _TOKEN_RE.fullmatch(rest[0]):
            raise BadCommandError("usage: stage NAME [drop=AREA ...] (NAME one word of letters, digits, . _ : -)")
        drops = []
        for word in rest[1:]:
            name, eq, area = word.partition("=")
            if name != "drop" or not eq:
                raise BadCommandError(f"unknown stage option {word[:40]!r}: use drop=AREA")
            drops.append(_area(area))
        return Command("stage", stage=rest[0], areas=tuple(dict.fromkeys(drops)))
    if verb == "drop":
        if len(rest) != 1:
            raise BadCommandError("usage: drop AREA (a scratch area, emptied now)")
        return Command("drop", areas=(_area(rest[0]),))
    if verb == "owner":
        if len(rest) != 1:
            raise BadCommandError("usage: owner PID")
        return Command("owner", pid=_pid(rest[0]))
    if verb == "label":
        if len(rest) != 1:
            raise BadCommandError("usage: label KEY=VALUE (VALUE percent-encoded)")
        return Command("label", options=(("label", _label(rest[0])),))
    if verb == "extend":
        if len(rest) != 1:
            raise BadCommandError("usage: extend DURATION (e.g. 2d): a running job's lease")
        return Command("extend", seconds=_lease(rest[0]))
    raise BadCommandError(
        f"unknown command {verb[:40]!r}: use completed, failed [REASON], cancelled [REASON], "
        "archived, stage NAME, drop AREA, owner PID, label KEY=VALUE or extend DURATION"
    )


def _area(name: str) -> str:
    if not JOB_ID_RE.fullmatch(name):
        raise BadCommandError(f"bad area name {name[:40]!r}")
    return name


_MAX_LEASE = 1000 * 365 * 86400.0


def _lease(text: str) -> float:
    """A positive duration (``14d``), at most 1000 years."""
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise BadCommandError(str(exc)) from None
    if seconds is None or not 0 < seconds <= _MAX_LEASE:
        raise BadCommandError(f"a lease is a positive duration, got {text[:40]!r}")
    return seconds


def _id_number(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() and int(text) < 1 << 32 else None


def _label(value: str) -> tuple[str, str]:
    """``KEY=VALUE``: KEY a token, VALUE percent-encoded text (one line, at most 1024 characters)."""
    key, eq, raw = value.partition("=")
    if not eq or not _TOKEN_RE.fullmatch(key):
        raise BadCommandError(f"a label is KEY=VALUE, KEY letters, digits, . _ : -: {value[:40]!r}")
    text = urllib.parse.unquote(raw, errors="strict")
    if len(text) > MAX_REASON_CHARS or _CONTROL_CHARS_RE.search(text):
        raise BadCommandError(f"bad label value for {key}")
    return key, text


def _git_text(value: str) -> str:
    """A percent-encoded path or ref (``urllib.parse.quote``): a repository path may hold spaces."""
    text = urllib.parse.unquote(value, errors="strict")
    if not text or len(text) > MAX_REASON_CHARS or _CONTROL_CHARS_RE.search(text):
        raise BadCommandError(f"bad value {value[:40]!r}")
    return text


#: Where a development workspace came from (README "Parallel development workspaces"): recorded as the record's ``git``.
GIT_OPTIONS = ("git_repo", "git_branch", "git_base", "git_base_commit")

_CREATE_OPTIONS = {
    "template": lambda v: _TOKEN_RE.fullmatch(v) and v,
    "quota": parse_size,
    "max_files": lambda v: v.isascii() and v.isdigit() and int(v) < 1 << 63 and int(v),
    "owner": _pid,
    "uid": _id_number,        # on behalf of a user: root only (the lifecycle checks)
    "gid": _id_number,
    "label": _label,          # repeatable
    "max_running": _lease,
    **{name: _git_text for name in GIT_OPTIONS},
}
_CLONE_OPTIONS = {name: _git_text for name in GIT_OPTIONS}


def _options(words: list[str], table: dict, verb: str) -> tuple:
    options = []
    for word in words:
        name, eq, value = word.partition("=")
        if not eq or name not in table:
            raise BadCommandError(f"unknown {verb} option {word[:40]!r}: use "
                                  + ", ".join(f"{n}=" for n in table))
        try:
            parsed = table[name](value)
        except (ValueError, BadCommandError):
            parsed = None
        if parsed is None or parsed is False:
            raise BadCommandError(f"bad value for {name}: {value[:40]!r}")
        options.append((name, parsed))
    return tuple(options)


def parse_control_command(data: bytes) -> Command:
    """Parse a ``.wsfs/control`` write (docs/spec.md §10): create, clone, restore, resume, publish, share,
    unshare, sweep, doctor, reload, note."""
    is_note = isinstance(data, (bytes, bytearray)) and bytes(data[:5]) == b"note "
    text = _decode_line(data, MAX_NOTE_BYTES if is_note else MAX_COMMAND_BYTES)
    verb, *rest = text.split()
    if verb == "note":
        if len(rest) != 2:
            raise BadCommandError("usage: note JOB TEXT (TEXT percent-encoded)")
        try:
            note = urllib.parse.unquote(rest[1], errors="strict")
        except UnicodeDecodeError:
            raise BadCommandError("a note is UTF-8 text") from None
        if not note or len(note) > MAX_NOTE_CHARS or _NOTE_CONTROL_RE.search(note):
            raise BadCommandError(f"a note is 1 to {MAX_NOTE_CHARS} characters, no control characters but tab "
                                  "and newline")
        return Command("note", job=validate_job_id(rest[0]), reason=note)
    if verb == "create":
        if not rest:
            raise BadCommandError("usage: create JOB [template=T] [quota=SIZE] [max_files=N] [owner=PID] "
                                  "[uid=U gid=G] [label=K=V ...] [max_running=DURATION]")
        job = validate_job_id(rest[0])
        return Command("create", job=job, options=_options(rest[1:], _CREATE_OPTIONS, "create"))
    if verb == "clone":
        if len(rest) < 2:
            raise BadCommandError("usage: clone SRC NEW [git_repo=P git_branch=B git_base=R git_base_commit=C]")
        return Command("clone", job=validate_job_id(rest[1]), source=validate_job_id(rest[0]),
                       options=_options(rest[2:], _CLONE_OPTIONS, "clone"))
    if verb in ("restore", "resume"):
        if len(rest) != 1:
            raise BadCommandError(f"usage: {verb} JOB")
        return Command(verb, job=validate_job_id(rest[0]))
    if verb == "sweep":
        if rest not in ([], ["dry-run"]):
            raise BadCommandError("usage: sweep [dry-run]")
        return Command("sweep", dry_run=bool(rest))
    if verb == "publish":
        if len(rest) not in (1, 2) or rest[1:] not in ([], ["retry"]):
            raise BadCommandError("usage: publish JOB [retry]")
        return Command("publish", job=validate_job_id(rest[0]), retry=len(rest) == 2)
    if verb in ("share", "unshare"):
        usage = "usage: share JOB u:UID|g:GID r|rw" if verb == "share" else "usage: unshare JOB u:UID|g:GID"
        if len(rest) != (3 if verb == "share" else 2):
            raise BadCommandError(usage)
        kind, _sep, number = rest[1].partition(":")
        if kind not in ("u", "g") or _id_number(number) is None or (verb == "share" and rest[2] not in ("r", "rw")):
            raise BadCommandError(usage)
        return Command(verb, job=validate_job_id(rest[0]), who=f"{kind}:{int(number)}",
                       access=rest[2] if verb == "share" else None)
    if verb == "reload":
        if rest:
            raise BadCommandError("usage: reload")
        return Command("reload")
    if verb == "doctor":
        if rest not in ([], ["repair"]):
            raise BadCommandError("usage: doctor [repair]")
        return Command("doctor", repair=bool(rest))
    raise BadCommandError(f"unknown control command {verb[:40]!r}: use create, clone, restore, resume, "
                          "publish, share, unshare, sweep, doctor, reload or note")
