"""Configuration: a TOML file -> a typed, validated ``Config`` with the defaults of docs/spec.md.

Every key is optional.  An unknown key, a bad value or a TOML syntax error
raises ``ConfigError`` naming the file and the key; nothing is half-applied.

    sweep_interval = "60s"
    on_crash = "quarantine"        # or "resume"
    min_free = "5%"                # or a size: "10G"
    max_jobs = 10000               # live workspaces; 0 = no limit
    quota = "0"                    # default per-job bytes; 0 = no limit
    max_files = 0

    [retention]                    # per state; "never" keeps forever
    completed = "never"
    failed = "7d"
    cancelled = "24h"
    crashed = "7d"
    grace = "24h"                  # hidden before purge; "0s" purges at expiry

    [templates.media]
    areas = { audio = "scratch", video = "scratch", output = "keep" }
    quota = "50G"
    [templates.media.retention]
    failed = "3d"                  # completed = "after-publish": delete once published

    [templates.audio]              # publishing (README "Publishing results", wsfs.publish)
    areas = { source = "input", work = "scratch", output = "keep" }
    publish = [{ area = "output", to = "/srv/library/{job}", mode = "move", replace = false }]
    on_completed = "curl -fsS -X POST https://example/api/done/$WSFS_JOB"   # also on_failed, on_crashed, on_purged
    publish_retries = 5            # also top level: the default for every template
    publish_backoff = "30s"        # doubles after each failed attempt
    hook_timeout = "10m"

    [templates.dev]                # built in (src keep, data input, temp scratch); override here
    quota = "10G"
    setup = "python -m venv ../temp/venv"   # run by `wsfs create` as the user, cwd src/
    max_jobs = 50                  # live workspaces of this template (any template may have one)
"""

from __future__ import annotations

import dataclasses
import os
import string
import tomllib

from .model import DEFAULT_TEMPLATE, JOB_ID_RE, STAGE_RE, AreaKind, JobState
from .units import MAX_SIZE, parse_duration, parse_size

DEFAULT_CONFIG_FILE = "/etc/wsfs/wsfs.toml"
#: The development template (`wsfs create --git`, README "Parallel development workspaces"): src/ is the git worktree.
DEV_TEMPLATE_NAME = "dev"
DEV_TEMPLATE = {"src": AreaKind.KEEP, "data": AreaKind.INPUT, "temp": AreaKind.SCRATCH}
RETENTION_STATES = ("completed", "failed", "cancelled", "crashed")
#: What the sweeper may purge early under disk pressure, by default: hidden jobs past half their grace,
#: whose data is on its way out anyway.  Ended states are added by the administrator.
DEFAULT_PRESSURE = ("hidden",)
PRESSURE_CLASSES = ("hidden",) + RETENTION_STATES
DEFAULT_PRESSURE_MIN_AGE = 3600.0
DEFAULT_RETENTION = {"completed": None, "failed": 7 * 86400.0, "cancelled": 86400.0, "crashed": 7 * 86400.0}
DEFAULT_GRACE = 86400.0
#: ``completed = "after-publish"``: the workspace goes once publishing succeeded (wsfs.publish).
AFTER_PUBLISH = "after-publish"
HOOK_NAMES = ("on_completed", "on_failed", "on_crashed", "on_purged")
PUBLISH_MODES = ("copy", "move")
PUBLISH_PLACEHOLDERS = ("job", "template", "date", "owner")
DEFAULT_PUBLISH_RETRIES = 5
DEFAULT_MAX_EXTENSIONS = 3
DEFAULT_EXPIRING_NOTICE = 86400.0  # like hpc-workspace's maxextensions
DEFAULT_PUBLISH_BACKOFF = 30.0
DEFAULT_HOOK_TIMEOUT = 600.0
MAX_DURATION = 1000 * 365 * 86400.0


class ConfigError(Exception):
    """A config file that cannot be used; the message names the file and key."""


@dataclasses.dataclass(frozen=True)
class PublishTarget:
    """One ``publish = [...]`` entry: an area copied (or moved) to ``to`` at completion."""

    area: str
    to: str               # an absolute path with {job} {template} {date} {owner} placeholders
    mode: str = "copy"    # or "move": the area leaves the workspace once everything is published
    replace: bool = False  # an existing destination is replaced (else: an error)


@dataclasses.dataclass(frozen=True)
class Template:
    name: str
    areas: dict[str, AreaKind]
    retention: dict[str, float | None]
    grace: float
    quota: int
    max_files: int
    # A shell command run by `wsfs create` as the calling user in the new workspace (wsfs.devspace);
    # the daemon never runs it.
    setup: str | None = None
    # Live workspaces of this template at most (0: no limit of its own; the top-level max_jobs still holds).
    max_jobs: int = 0
    # Publishing (wsfs.publish): targets in order, hooks by name (HOOK_NAMES) -> shell command.
    publish: tuple[PublishTarget, ...] = ()
    hooks: dict[str, str] = dataclasses.field(default_factory=dict)
    publish_retries: int = DEFAULT_PUBLISH_RETRIES
    publish_backoff: float = DEFAULT_PUBLISH_BACKOFF
    hook_timeout: float = DEFAULT_HOOK_TIMEOUT
    # The lease of a running job: past it the job is crashed ("lease expired"), unless extended
    # (`extend DUR` on .state, at most max_extensions times).  None: no lease.
    max_running: float | None = None
    max_extensions: int = DEFAULT_MAX_EXTENSIONS
    # Notices before data goes (wsfs.retention): a shell command run as the owner, once,
    # expiring_notice before the job is hidden and again before it is purged.
    on_expiring: str | None = None
    expiring_notice: float = DEFAULT_EXPIRING_NOTICE
    # Eager scratch cleanup (README "Dropping scratch during a run"): scratch area -> the stages
    # whose start empties it, as `stage NAME drop=AREA` does.
    drop_on_stage: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    def drops_at(self, stage: str) -> list[str]:
        """The scratch areas that entering ``stage`` empties."""
        return [area for area, stages in self.drop_on_stage.items() if stage in stages]

    @property
    def after_publish(self) -> bool:
        return self.retention.get("completed") == AFTER_PUBLISH

    def publishes(self) -> bool:
        """Does completion start publishing (targets or an on_completed hook)?"""
        return bool(self.publish or self.hooks.get("on_completed"))

    def scratch_areas(self) -> list[str]:
        return [a for a, kind in self.areas.items() if kind == AreaKind.SCRATCH]

    def keep_areas(self) -> list[str]:
        return [a for a, kind in self.areas.items() if kind == AreaKind.KEEP]

    def expiry_after(self, state: JobState) -> float | None:
        after = self.retention.get(state.value)
        return None if after == AFTER_PUBLISH else after  # after-publish: no deadline, publishing decides


@dataclasses.dataclass(frozen=True)
class Config:
    source: str | None = None
    sweep_interval: float = 60.0
    on_crash: str = "quarantine"
    min_free_bytes: int = 0
    min_free_fraction: float = 0.05
    max_jobs: int = 0
    # Cleanup under disk pressure (wsfs.retention): below min_free the sweeper empties the trash,
    # then purges early, class by class in this order, oldest first, never a running job or one
    # ended within pressure_min_age.  () is off.
    pressure: tuple[str, ...] = DEFAULT_PRESSURE
    pressure_min_age: float = DEFAULT_PRESSURE_MIN_AGE
    metrics_listen: str | None = None  # "HOST:PORT": the metrics over HTTP too
    # Per-user limits over all of a user's live jobs (0: none), with [users.NAME] and
    # [groups.NAME] overrides: name -> (max_jobs, quota).
    max_jobs_per_user: int = 0
    quota_per_user: int = 0
    user_limits: dict[str, tuple[int | None, int | None]] = dataclasses.field(default_factory=dict)
    group_limits: dict[str, tuple[int | None, int | None]] = dataclasses.field(default_factory=dict)
    # uid -> limits_for(uid): user and group lookups once per config (a reload starts afresh)
    _limits_cache: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def limits_for(self, uid: int) -> tuple[int, int]:
        """(max_jobs, quota) of a user, each: its [users.NAME] (or [users.UID]) table's, else
        the most generous of its groups' [groups.NAME] tables (0, no limit, is the most
        generous), else the top-level max_jobs_per_user and quota_per_user."""
        if not (self.max_jobs_per_user or self.quota_per_user or self.user_limits or self.group_limits):
            return 0, 0
        cached = self._limits_cache.get(uid)
        if cached is None:
            cached = self._limits_cache[uid] = self._lookup_limits(uid)
        return cached

    def _lookup_limits(self, uid: int) -> tuple[int, int]:
        import grp
        import pwd

        try:
            entry = pwd.getpwuid(uid)
            name, gid = entry.pw_name, entry.pw_gid
        except KeyError:
            name, gid = str(uid), None
        limits: list[int] = [self.max_jobs_per_user, self.quota_per_user]
        own = self.user_limits.get(name) or self.user_limits.get(str(uid))
        matching = []
        if self.group_limits and gid is not None and own is None:
            groups = {grp.getgrgid(g).gr_name for g in os.getgrouplist(name, gid) if _group_exists(g)}
            matching = [self.group_limits[g] for g in groups if g in self.group_limits]
        for i in (0, 1):
            mine = own[i] if own is not None else None
            if mine is not None:
                limits[i] = mine
            else:
                values = [v for m in matching if (v := m[i]) is not None]
                if values:
                    limits[i] = 0 if 0 in values else max(values)
        return limits[0], limits[1]
    templates: dict[str, Template] = dataclasses.field(default_factory=dict)

    def template(self, name: str) -> Template:
        if name == DEV_TEMPLATE_NAME and name not in self.templates:
            # Built in, so `wsfs create --git` works with no config; `[templates.dev]` overrides it.
            dev = dataclasses.replace(self.templates["default"], name=DEV_TEMPLATE_NAME, areas=dict(DEV_TEMPLATE))
            if getattr(dev, "publish", None):  # the default's targets may name areas dev has not
                dev = dataclasses.replace(dev, publish=tuple(t for t in dev.publish if t.area in DEV_TEMPLATE))
            return dev
        return self.templates[name]


def _default_template(retention=None, grace=DEFAULT_GRACE, quota=0, max_files=0) -> Template:
    return Template("default", dict(DEFAULT_TEMPLATE), dict(retention or DEFAULT_RETENTION), grace, quota, max_files)


def default_config() -> Config:
    return Config(templates={"default": _default_template()})


class _Reader:
    """Pulls typed values out of a TOML table, naming file and key on error."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key}: {message}")

    def check_keys(self, table: dict, allowed: set[str], prefix: str) -> None:
        for key in table:
            if key not in allowed:
                raise self.fail(prefix + key, f"unknown key (known: {', '.join(sorted(allowed))})")

    def duration(self, value, key: str) -> float | None:
        parsed: float | None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if value < 0:
                raise self.fail(key, f"a duration is >= 0, got {value!r}")
            parsed = float(value)
        else:
            try:
                parsed = parse_duration(value)
            except (ValueError, TypeError) as exc:
                raise self.fail(key, str(exc)) from None
        # nan, inf and huge values would break the expiry index's 64-bit millisecond keys.
        if parsed is not None and not parsed <= MAX_DURATION:
            raise self.fail(key, f"a duration is at most 1000 years (or 'never'), got {value!r}")
        return parsed

    def size(self, value, key: str) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SIZE:
            return value
        try:
            return parse_size(value)  # also refuses an integer above MAX_SIZE, naming it
        except (ValueError, TypeError) as exc:
            raise self.fail(key, str(exc)) from None

    def count(self, value, key: str) -> int:
        # tomllib reads integers of any size; the store keeps counts as 64-bit msgpack integers.
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SIZE:
            raise self.fail(key, f"expected a whole number from 0 to {MAX_SIZE}, got {value!r}")
        return value

    def retention(self, table, key: str, base: dict) -> tuple[dict, float | None]:
        if not isinstance(table, dict):
            raise self.fail(key, "expected a table")
        self.check_keys(table, set(RETENTION_STATES) | {"grace"}, key + ".")
        out = dict(base)
        grace = None
        for name, value in table.items():
            if name == "completed" and value == AFTER_PUBLISH:
                out[name] = AFTER_PUBLISH
                continue
            parsed = self.duration(value, f"{key}.{name}")
            if name == "grace":
                if parsed is None:
                    raise self.fail(f"{key}.grace", "grace cannot be 'never'")
                grace = parsed
            else:
                out[name] = parsed
        return out, grace


# Files the daemon writes at a job's root (lifecycle.RECEIPT_FILE and its tmp): no area takes their name.
RESERVED_ROOT_NAMES = {"receipt.json", "receipt.json.tmp"}
_PUBLISH_SETTINGS = {"publish_retries", "publish_backoff", "hook_timeout"}
_LEASE_SETTINGS = {"max_running", "max_extensions", "on_expiring", "expiring_notice"}
_TOP_KEYS = {"sweep_interval", "on_crash", "min_free", "max_jobs", "quota", "max_files", "retention", "pressure",
             "pressure_min_age",
             "templates", "metrics_listen", "max_jobs_per_user", "quota_per_user", "users", "groups"} \
    | _PUBLISH_SETTINGS | _LEASE_SETTINGS
_TEMPLATE_KEYS = ({"areas", "retention", "quota", "max_files", "setup", "max_jobs", "publish", "drop_on_stage"}
                  | set(HOOK_NAMES)
                  | _PUBLISH_SETTINGS | _LEASE_SETTINGS)
_TARGET_KEYS = {"area", "to", "mode", "replace"}


def parse_config(data: dict, source: str = "<config>") -> Config:
    r = _Reader(source)
    r.check_keys(data, _TOP_KEYS, "")
    kwargs: dict = {"source": source}
    if "sweep_interval" in data:
        interval = r.duration(data["sweep_interval"], "sweep_interval")
        if interval is None or interval <= 0:
            raise r.fail("sweep_interval", "must be a positive duration")
        kwargs["sweep_interval"] = interval
    if "on_crash" in data:
        if data["on_crash"] not in ("quarantine", "resume"):
            raise r.fail("on_crash", f"expected 'quarantine' or 'resume', got {data['on_crash']!r}")
        kwargs["on_crash"] = data["on_crash"]
    if "min_free" in data:
        value = data["min_free"]
        if isinstance(value, str) and value.strip().endswith("%"):
            try:
                fraction = float(value.strip()[:-1]) / 100
            except ValueError:
                raise r.fail("min_free", f"not a percentage: {value!r}") from None
            if not 0 <= fraction < 1:
                raise r.fail("min_free", "a percentage from 0% to 99%")
            kwargs["min_free_fraction"], kwargs["min_free_bytes"] = fraction, 0
        else:
            kwargs["min_free_bytes"], kwargs["min_free_fraction"] = r.size(value, "min_free"), 0.0
    if "max_jobs" in data:
        kwargs["max_jobs"] = r.count(data["max_jobs"], "max_jobs")
    if "pressure" in data:
        value = data["pressure"]
        if value == "off":
            value = []
        if not isinstance(value, list) or not all(v in PRESSURE_CLASSES for v in value) \
                or len(set(value)) != len(value):
            raise r.fail("pressure", f"expected \"off\" or a list of {', '.join(PRESSURE_CLASSES)} (each once), "
                                     f"got {value!r}")
        kwargs["pressure"] = tuple(value)
    if "pressure_min_age" in data:
        age = r.duration(data["pressure_min_age"], "pressure_min_age")
        if age is None:
            raise r.fail("pressure_min_age", "a duration such as \"1h\" (\"never\" is pressure = \"off\")")
        kwargs["pressure_min_age"] = age
    if "max_jobs_per_user" in data:
        kwargs["max_jobs_per_user"] = r.count(data["max_jobs_per_user"], "max_jobs_per_user")
    if "quota_per_user" in data:
        kwargs["quota_per_user"] = r.size(data["quota_per_user"], "quota_per_user")
    for table_name in ("users", "groups"):
        table = data.get(table_name, {})
        if not isinstance(table, dict):
            raise r.fail(table_name, "expected tables like [users.alice] max_jobs = 5")
        limits = {}
        for name, entry in table.items():
            key = f"{table_name}.{name}"
            if not isinstance(entry, dict):
                raise r.fail(key, "expected a table with max_jobs and/or quota")
            r.check_keys(entry, {"max_jobs", "quota"}, key + ".")
            limits[name] = (r.count(entry["max_jobs"], key + ".max_jobs") if "max_jobs" in entry else None,
                            r.size(entry["quota"], key + ".quota") if "quota" in entry else None)
        kwargs[f"{table_name[:-1]}_limits"] = limits
    if "metrics_listen" in data:
        value = data["metrics_listen"]
        host, _sep, port = value.rpartition(":") if isinstance(value, str) else ("", "", "")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise r.fail("metrics_listen", f'expected "HOST:PORT", e.g. "127.0.0.1:9105", got {value!r}')
        kwargs["metrics_listen"] = value
    quota = r.size(data["quota"], "quota") if "quota" in data else 0
    max_files = r.count(data["max_files"], "max_files") if "max_files" in data else 0
    retention, grace = dict(DEFAULT_RETENTION), DEFAULT_GRACE
    if "retention" in data:
        retention, new_grace = r.retention(data["retention"], "retention", retention)
        grace = DEFAULT_GRACE if new_grace is None else new_grace
    publish_defaults = _publish_settings(r, data, "", {})
    lease_defaults = _lease_settings(r, data, "", {})
    templates = {"default": dataclasses.replace(_default_template(retention, grace, quota, max_files),
                                                **publish_defaults, **lease_defaults)}
    raw_templates = data.get("templates", {})
    if not isinstance(raw_templates, dict):
        raise r.fail("templates", "expected a table of templates")
    for name, table in raw_templates.items():
        key = f"templates.{name}"
        if not JOB_ID_RE.fullmatch(name):
            raise r.fail(key, "a template name is letters, digits, . _ -")
        if not isinstance(table, dict):
            raise r.fail(key, "expected a table")
        r.check_keys(table, _TEMPLATE_KEYS, key + ".")
        areas = dict(DEFAULT_TEMPLATE) if name == "default" else dict(DEV_TEMPLATE) if name == DEV_TEMPLATE_NAME \
            else None
        if "areas" in table:
            if not isinstance(table["areas"], dict) or not table["areas"]:
                raise r.fail(key + ".areas", "expected a table like { output = \"keep\", temp = \"scratch\" }")
            areas = {}
            for area, kind in table["areas"].items():
                if not JOB_ID_RE.fullmatch(area) or area.startswith(".") or area in RESERVED_ROOT_NAMES:
                    raise r.fail(f"{key}.areas.{area}", "an area name is letters, digits, . _ - (not receipt.json)")
                try:
                    areas[area] = AreaKind(kind)
                except ValueError:
                    raise r.fail(f"{key}.areas.{area}", f"expected keep, scratch or input, got {kind!r}") from None
        if areas is None:
            raise r.fail(key + ".areas", "a template needs its areas")
        t_retention, t_grace = retention, grace
        if "retention" in table:
            t_retention, new_grace = r.retention(table["retention"], key + ".retention", retention)
            t_grace = grace if new_grace is None else new_grace
        templates[name] = Template(
            name, areas, t_retention, t_grace,
            r.size(table["quota"], key + ".quota") if "quota" in table else quota,
            r.count(table["max_files"], key + ".max_files") if "max_files" in table else max_files,
            _setup_command(r, table, key),
            max_jobs=r.count(table["max_jobs"], key + ".max_jobs") if "max_jobs" in table else 0,
            drop_on_stage=_drop_on_stage(r, table, key, areas),
            **_publish_settings(r, table, key + ".", publish_defaults, areas),
            **_lease_settings(r, table, key + ".", lease_defaults),
        )
    for name, template in templates.items():
        if template.after_publish and not template.publishes():
            raise r.fail(f"templates.{name}.retention.completed" if name in raw_templates else "retention.completed",
                         f"'after-publish' needs something to publish: template {name!r} has no publish targets "
                         "and no on_completed hook")
    kwargs["templates"] = templates
    return Config(**kwargs)


def _group_exists(gid: int) -> bool:
    import grp

    try:
        grp.getgrgid(gid)
        return True
    except KeyError:
        return False


def _lease_settings(r: _Reader, table: dict, prefix: str, defaults: dict) -> dict:
    """``max_running`` (a duration or "never") and ``max_extensions``, over ``defaults``."""
    out = {k: defaults[k] for k in _LEASE_SETTINGS if k in defaults}
    if "max_running" in table:
        value = r.duration(table["max_running"], prefix + "max_running")
        if value is not None and value <= 0:
            raise r.fail(prefix + "max_running", "must be a positive duration or 'never'")
        out["max_running"] = value
    if "max_extensions" in table:
        out["max_extensions"] = r.count(table["max_extensions"], prefix + "max_extensions")
    if "on_expiring" in table:
        value = table["on_expiring"]
        if not isinstance(value, str) or not value.strip():
            raise r.fail(prefix + "on_expiring", "expected a shell command line")
        out["on_expiring"] = value
    if "expiring_notice" in table:
        value = r.duration(table["expiring_notice"], prefix + "expiring_notice")
        if value is None or value <= 0:
            raise r.fail(prefix + "expiring_notice", "must be a positive duration")
        out["expiring_notice"] = value
    return out


def _drop_on_stage(r: _Reader, table: dict, key: str, areas: dict) -> dict[str, tuple[str, ...]]:
    """``drop_on_stage = { temp = ["encode"] }``: a scratch area emptied when a stage starts."""
    value = table.get("drop_on_stage", {})
    key += ".drop_on_stage"
    if not isinstance(value, dict):
        raise r.fail(key, 'expected a table like { temp = ["encode"] }')
    out = {}
    for area, stages in value.items():
        if areas.get(area) != AreaKind.SCRATCH:
            raise r.fail(f"{key}.{area}", f"{area!r} is not a scratch area of this template: only scratch is dropped")
        if not isinstance(stages, list) or not all(isinstance(s, str) and STAGE_RE.fullmatch(s) for s in stages):
            raise r.fail(f"{key}.{area}", 'expected a list of stage names, e.g. ["encode"]')
        out[area] = tuple(stages)
    return out


def _setup_command(r: _Reader, table: dict, key: str) -> str | None:
    if "setup" not in table:
        return None
    value = table["setup"]
    if not isinstance(value, str) or not value.strip():
        raise r.fail(key + ".setup", "expected a shell command line, e.g. \"python -m venv ../temp/venv\"")
    return value


def _publish_settings(r: _Reader, table: dict, prefix: str, defaults: dict, areas: dict | None = None) -> dict:
    """Template keyword arguments for publishing: retries, backoff, timeout; with ``areas``, targets and hooks."""
    out = dict(defaults)
    if "publish_retries" in table:
        out["publish_retries"] = r.count(table["publish_retries"], prefix + "publish_retries")
    for name in ("publish_backoff", "hook_timeout"):
        if name in table:
            value = r.duration(table[name], prefix + name)
            if value is None or value <= 0:
                raise r.fail(prefix + name, "must be a positive duration")
            out[name] = value
    if areas is None:
        return out
    hooks = {}
    for name in HOOK_NAMES:
        if name in table:
            value = table[name]
            if not isinstance(value, str) or not value.strip():
                raise r.fail(prefix + name, "expected a shell command line, e.g. \"rclone copy $WSFS_OUTPUT remote:\"")
            hooks[name] = value
    out["hooks"] = hooks
    raw = table.get("publish", [])
    if not isinstance(raw, list):
        raise r.fail(prefix + "publish", "expected a list like [{ area = \"output\", to = \"/srv/out/{job}\" }]")
    targets, moved = [], set()
    for i, entry in enumerate(raw):
        key = f"{prefix}publish[{i}]"
        if not isinstance(entry, dict):
            raise r.fail(key, "expected a table { area = ..., to = ..., mode = ..., replace = ... }")
        r.check_keys(entry, _TARGET_KEYS, key + ".")
        area, to = entry.get("area"), entry.get("to")
        if not isinstance(area, str) or area not in areas:
            raise r.fail(key + ".area", f"expected one of the template's areas ({', '.join(areas)}), got {area!r}")
        if areas[area] == AreaKind.SCRATCH:
            raise r.fail(key + ".area", f"{area!r} is a scratch area: it is deleted at completion, not published")
        if not isinstance(to, str) or not to.startswith("/") or to.rstrip("/") == "":
            raise r.fail(key + ".to", f"expected an absolute path like \"/srv/library/{{job}}\", got {to!r}")
        try:
            fields = [f for _text, f, _spec, _conv in string.Formatter().parse(to) if f is not None]
        except ValueError as exc:
            raise r.fail(key + ".to", f"bad placeholder: {exc}") from None
        for field in fields:
            if field not in PUBLISH_PLACEHOLDERS:
                raise r.fail(key + ".to", f"unknown placeholder {{{field}}} (known: "
                             + ", ".join("{" + p + "}" for p in PUBLISH_PLACEHOLDERS) + ")")
        if ".." in to.split("/"):
            raise r.fail(key + ".to", "no '..' in a destination")
        mode = entry.get("mode", "copy")
        if mode not in PUBLISH_MODES:
            raise r.fail(key + ".mode", f"expected 'copy' or 'move', got {mode!r}")
        if mode == "move":
            if area in moved:
                raise r.fail(key + ".mode", f"area {area!r} is moved twice")
            moved.add(area)
        replace = entry.get("replace", False)
        if not isinstance(replace, bool):
            raise r.fail(key + ".replace", f"expected true or false, got {replace!r}")
        targets.append(PublishTarget(area, to.rstrip("/"), mode, replace))
    out["publish"] = tuple(targets)
    return out


def load_config(path: str | None) -> Config:
    """Load ``path``; with None, the default file when present, else the defaults."""
    if path is None:
        if not os.path.exists(DEFAULT_CONFIG_FILE):
            return default_config()
        path = DEFAULT_CONFIG_FILE
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    return parse_config(data, path)
