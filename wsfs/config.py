"""Configuration: a TOML file -> a typed, validated ``Config`` with SPEC defaults.

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
    failed = "3d"
"""

from __future__ import annotations

import dataclasses
import os
import tomllib

from .model import DEFAULT_TEMPLATE, JOB_ID_RE, AreaKind, JobState
from .units import parse_duration, parse_size

DEFAULT_CONFIG_FILE = "/etc/wsfs/wsfs.toml"
RETENTION_STATES = ("completed", "failed", "cancelled", "crashed")
DEFAULT_RETENTION = {"completed": None, "failed": 7 * 86400.0, "cancelled": 86400.0, "crashed": 7 * 86400.0}
DEFAULT_GRACE = 86400.0
MAX_DURATION = 1000 * 365 * 86400.0


class ConfigError(Exception):
    """A config file that cannot be used; the message names the file and key."""


@dataclasses.dataclass(frozen=True)
class Template:
    name: str
    areas: dict[str, AreaKind]
    retention: dict[str, float | None]
    grace: float
    quota: int
    max_files: int

    def scratch_areas(self) -> list[str]:
        return [a for a, kind in self.areas.items() if kind == AreaKind.SCRATCH]

    def keep_areas(self) -> list[str]:
        return [a for a, kind in self.areas.items() if kind == AreaKind.KEEP]

    def expiry_after(self, state: JobState) -> float | None:
        return self.retention.get(state.value)


@dataclasses.dataclass(frozen=True)
class Config:
    source: str | None = None
    sweep_interval: float = 60.0
    on_crash: str = "quarantine"
    min_free_bytes: int = 0
    min_free_fraction: float = 0.05
    max_jobs: int = 0
    templates: dict[str, Template] = dataclasses.field(default_factory=dict)

    def template(self, name: str) -> Template:
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
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        try:
            return parse_size(value)
        except (ValueError, TypeError) as exc:
            raise self.fail(key, str(exc)) from None

    def count(self, value, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.fail(key, f"expected a whole number >= 0, got {value!r}")
        return value

    def retention(self, table, key: str, base: dict) -> tuple[dict, float | None]:
        if not isinstance(table, dict):
            raise self.fail(key, "expected a table")
        self.check_keys(table, set(RETENTION_STATES) | {"grace"}, key + ".")
        out = dict(base)
        grace = None
        for name, value in table.items():
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
_TOP_KEYS = {"sweep_interval", "on_crash", "min_free", "max_jobs", "quota", "max_files", "retention", "templates"}
_TEMPLATE_KEYS = {"areas", "retention", "quota", "max_files"}


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
    quota = r.size(data["quota"], "quota") if "quota" in data else 0
    max_files = r.count(data["max_files"], "max_files") if "max_files" in data else 0
    retention, grace = dict(DEFAULT_RETENTION), DEFAULT_GRACE
    if "retention" in data:
        retention, new_grace = r.retention(data["retention"], "retention", retention)
        grace = DEFAULT_GRACE if new_grace is None else new_grace
    templates = {"default": _default_template(retention, grace, quota, max_files)}
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
        areas = dict(DEFAULT_TEMPLATE) if name == "default" else None
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
        )
    kwargs["templates"] = templates
    return Config(**kwargs)


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
