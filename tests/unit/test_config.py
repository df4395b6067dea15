"""Configuration (config.py, docs/spec.md §4, §8, §9): defaults, every key, templates, clear errors."""

from __future__ import annotations

import math
import tomllib

import pytest
from conftest import parse_toml_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsfs.core import config as config_module
from wsfs.core.config import Config, ConfigError, Template, default_config, load_config, parse_config
from wsfs.core.model import AreaKind, JobState

DAY, HOUR = 86400.0, 3600.0

# docs/spec.md §4's table, by hand.
SPEC_RETENTION = {"completed": None, "failed": 7 * DAY, "cancelled": 24 * HOUR, "crashed": 7 * DAY}
SPEC_GRACE = 24 * HOUR
SPEC_AREAS = {"input": AreaKind.INPUT, "output": AreaKind.KEEP, "temp": AreaKind.SCRATCH}


def assert_spec_defaults(cfg: Config) -> None:
    assert cfg.sweep_interval == 60.0
    assert cfg.on_crash == "quarantine"
    assert cfg.min_free_fraction == 0.05 and cfg.min_free_bytes == 0
    assert cfg.max_jobs == 0
    assert list(cfg.templates) == ["default"]
    t = cfg.template("default")
    assert t.name == "default"
    assert t.areas == SPEC_AREAS
    assert t.retention == SPEC_RETENTION
    assert t.grace == SPEC_GRACE
    assert t.quota == 0 and t.max_files == 0


def test_defaults_are_the_spec_table():
    assert_spec_defaults(default_config())


def test_an_empty_file_gives_the_defaults(tmp_path):
    path = tmp_path / "wsfs.toml"
    path.write_text("")
    cfg = load_config(str(path))
    assert_spec_defaults(cfg)
    assert cfg.source == str(path)


def test_no_file_and_no_default_file_gives_the_defaults(monkeypatch, tmp_path):
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_FILE", str(tmp_path / "absent.toml"))
    assert_spec_defaults(load_config(None))


def test_the_default_file_is_read_when_present(monkeypatch, tmp_path):
    path = tmp_path / "etc.toml"
    path.write_text('max_jobs = 3\n')
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_FILE", str(path))
    cfg = load_config(None)
    assert cfg.max_jobs == 3 and cfg.source == str(path)


def test_default_templates_are_not_shared_between_configs():
    a, b = default_config(), default_config()
    a.template("default").areas["extra"] = AreaKind.KEEP
    assert "extra" not in b.template("default").areas


def test_expiry_after_and_area_kinds():
    t = default_config().template("default")
    assert t.expiry_after(JobState.COMPLETED) is None
    assert t.expiry_after(JobState.FAILED) == 7 * DAY
    assert t.expiry_after(JobState.CANCELLED) == DAY
    assert t.expiry_after(JobState.CRASHED) == 7 * DAY
    assert t.expiry_after(JobState.RUNNING) is None
    assert t.scratch_areas() == ["temp"]
    assert t.keep_areas() == ["output"]


# -- every key ------------------------------------------------------------------------------

FULL = """
sweep_interval = "30s"
on_crash = "resume"
min_free = "10%"
max_jobs = 100
quota = "2G"
max_files = 5000

[retention]
completed = "30d"
failed = "3d"
cancelled = "1h"
crashed = "never"
grace = "0s"

[templates.media]
areas = { audio = "scratch", video = "scratch", output = "keep", src = "input" }
quota = "50G"
max_files = 10
[templates.media.retention]
failed = "12h"
grace = "2h"

[templates.light]
areas = { out = "keep" }
"""


def test_every_key(tmp_path):
    path = tmp_path / "full.toml"
    path.write_text(FULL)
    cfg = load_config(str(path))
    assert cfg.sweep_interval == 30.0
    assert cfg.on_crash == "resume"
    assert cfg.min_free_fraction == pytest.approx(0.10) and cfg.min_free_bytes == 0
    assert cfg.max_jobs == 100
    d = cfg.template("default")
    assert d.areas == SPEC_AREAS
    assert d.quota == 2 << 30 and d.max_files == 5000
    assert d.retention == {"completed": 30 * DAY, "failed": 3 * DAY, "cancelled": HOUR, "crashed": None}
    assert d.grace == 0.0
    media = cfg.template("media")
    assert media.areas == {"audio": AreaKind.SCRATCH, "video": AreaKind.SCRATCH, "output": AreaKind.KEEP,
                           "src": AreaKind.INPUT}
    assert media.scratch_areas() == ["audio", "video"] and media.keep_areas() == ["output"]
    assert media.quota == 50 << 30 and media.max_files == 10
    # Per-template retention overrides only what it names; the rest comes from the top level.
    assert media.retention == {"completed": 30 * DAY, "failed": 12 * HOUR, "cancelled": HOUR, "crashed": None}
    assert media.grace == 2 * HOUR
    light = cfg.template("light")
    assert light.areas == {"out": AreaKind.KEEP}
    assert light.quota == 2 << 30 and light.max_files == 5000   # inherited from the top level
    assert light.retention == d.retention and light.grace == 0.0
    with pytest.raises(KeyError):
        cfg.template("absent")


@pytest.mark.parametrize("toml, attr, expected", [
    ('sweep_interval = 15', "sweep_interval", 15.0),
    ('sweep_interval = 0.5', "sweep_interval", 0.5),
    ('sweep_interval = "2m"', "sweep_interval", 120.0),
    ('on_crash = "quarantine"', "on_crash", "quarantine"),
    ('min_free = "10G"', "min_free_bytes", 10 << 30),
    ('min_free = 4096', "min_free_bytes", 4096),
    ('min_free = "0%"', "min_free_fraction", 0.0),
    ('min_free = " 50% "', "min_free_fraction", 0.5),
    ('max_jobs = 0', "max_jobs", 0),
])
def test_top_level_values(toml, attr, expected):
    assert getattr(parse_config(tomllib.loads(toml)), attr) == expected


def test_min_free_as_a_size_turns_the_percentage_off():
    cfg = parse_config({"min_free": "1G"})
    assert cfg.min_free_bytes == 1 << 30 and cfg.min_free_fraction == 0.0


@pytest.mark.parametrize("toml, quota, max_files", [
    ('quota = 1024', 1024, 0), ('quota = "1.5K"', 1536, 0), ('max_files = 9', 0, 9),
    ('quota = "0"\nmax_files = 0', 0, 0),
])
def test_default_quota_and_max_files(toml, quota, max_files):
    t = parse_config(tomllib.loads(toml)).template("default")
    assert (t.quota, t.max_files) == (quota, max_files)


def test_retention_numbers_are_seconds():
    t = parse_config({"retention": {"failed": 60, "cancelled": 1.5, "grace": 0}}).template("default")
    assert t.retention["failed"] == 60.0 and t.retention["cancelled"] == 1.5 and t.grace == 0.0


def test_the_default_template_can_be_overridden():
    cfg = parse_config(tomllib.loads('[templates.default]\nquota = "1M"\n'))
    assert cfg.template("default").areas == SPEC_AREAS and cfg.template("default").quota == 1 << 20
    cfg = parse_config(tomllib.loads('[templates.default]\nareas = { work = "scratch", out = "keep" }\n'))
    assert cfg.template("default").areas == {"work": AreaKind.SCRATCH, "out": AreaKind.KEEP}


def test_template_names_with_dots_dashes_underscores():
    cfg = parse_config({"templates": {"a.b-c_d": {"areas": {"x": "keep"}}}})
    assert cfg.template("a.b-c_d").areas == {"x": AreaKind.KEEP}


# -- errors: each names the file and the key --------------------------------------------------


@pytest.mark.parametrize("toml, key", [
    ('colour = "red"', "colour"),
    ('[templates.media]\nareas = { output = "keep" }\ncolour = 1', "templates.media.colour"),
    ('[retention]\nfailed = "soon"', "retention.failed"),
    ('[retention]\nrunning = "1d"', "retention.running"),
    ('[retention]\ngrace = "never"', "retention.grace"),
    ('retention = 5', "retention"),
    ('quota = "lots"', "quota"),
    ('quota = -1', "quota"),
    ('quota = true', "quota"),
    ('quota = "99999999999P"', "quota"),
    ('min_free = "lots"', "min_free"),
    ('min_free = "abc%"', "min_free"),
    ('min_free = "100%"', "min_free"),
    ('min_free = "-5%"', "min_free"),
    ('max_files = -1', "max_files"),
    ('max_files = "5"', "max_files"),
    ('max_files = 1.5', "max_files"),
    ('max_jobs = true', "max_jobs"),
    ('max_jobs = -3', "max_jobs"),
    ('on_crash = "restart"', "on_crash"),
    ('on_crash = 1', "on_crash"),
    ('sweep_interval = "0s"', "sweep_interval"),
    ('sweep_interval = 0', "sweep_interval"),
    ('sweep_interval = "never"', "sweep_interval"),
    ('sweep_interval = "fast"', "sweep_interval"),
    ('sweep_interval = true', "sweep_interval"),
    ('templates = 3', "templates"),
    ('[templates]\nmedia = 3', "templates.media"),
    ('[templates.media]\nquota = "1G"', "templates.media.areas"),
    ('[templates.media]\nareas = {}', "templates.media.areas"),
    ('[templates.media]\nareas = ["output"]', "templates.media.areas"),
    ('[templates.media]\nareas = { audio = "trash" }', "templates.media.areas.audio"),
    ('[templates.media]\nareas = { audio = 1 }', "templates.media.areas.audio"),
    ('[templates.media]\nareas = { "-x" = "keep" }', "templates.media.areas.-x"),
    ('[templates.media]\nareas = { "a/b" = "keep" }', "templates.media.areas.a/b"),
    ('[templates.media]\nareas = { ".state" = "keep" }', "templates.media.areas..state"),
    ('[templates."-bad"]\nareas = { out = "keep" }', "templates.-bad"),
    ('[templates."a/b"]\nareas = { out = "keep" }', "templates.a/b"),
    ('[templates.media]\nareas = { out = "keep" }\nquota = "x"', "templates.media.quota"),
    ('[templates.media]\nareas = { out = "keep" }\nmax_files = -2', "templates.media.max_files"),
    ('[templates.media]\nareas = { out = "keep" }\nretention = { failed = "x" }', "templates.media.retention.failed"),
    ('[templates.media]\nareas = { out = "keep" }\nretention = { purge = "1d" }', "templates.media.retention.purge"),
    ('[templates.media]\nareas = { out = "keep" }\nretention = 1', "templates.media.retention"),
    ('[templates.media]\nareas = { out = "keep", tmp = "scratch" }\ndrop_on_stage = { out = ["x"] }',
     "templates.media.drop_on_stage.out"),
    ('[templates.media]\nareas = { out = "keep", tmp = "scratch" }\ndrop_on_stage = { nope = ["x"] }',
     "templates.media.drop_on_stage.nope"),
    ('[templates.media]\nareas = { out = "keep", tmp = "scratch" }\ndrop_on_stage = { tmp = "x" }',
     "templates.media.drop_on_stage.tmp"),
    ('[templates.media]\nareas = { out = "keep", tmp = "scratch" }\ndrop_on_stage = { tmp = ["a b"] }',
     "templates.media.drop_on_stage.tmp"),
    ('[templates.media]\nareas = { out = "keep", tmp = "scratch" }\ndrop_on_stage = ["tmp"]',
     "templates.media.drop_on_stage"),
    # A deadline is stored as a 64-bit millisecond key: it must be a finite time >= 0.
    ('[retention]\nfailed = -1', "retention.failed"),
    ('[retention]\nfailed = inf', "retention.failed"),
    ('[retention]\nfailed = nan', "retention.failed"),
    ('[retention]\nfailed = 1e300', "retention.failed"),
    ('[retention]\ncancelled = "99999999999999999w"', "retention.cancelled"),
    ('[retention]\ngrace = -5', "retention.grace"),
    ('sweep_interval = nan', "sweep_interval"),
    ('sweep_interval = inf', "sweep_interval"),
    # receipt.json lives at a job's root (docs/spec.md §3, §6): no area may take its name.
    ('[templates.media]\nareas = { "receipt.json" = "keep" }', "templates.media.areas.receipt.json"),
])
def test_errors_name_the_file_and_the_key(tmp_path, toml, key):
    path = tmp_path / "bad.toml"
    path.write_text(toml + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: {key}: "), message
    assert len(message) > len(f"{path}: {key}: ")


def test_toml_syntax_error_names_the_file_and_the_line(tmp_path):
    path = tmp_path / "syntax.toml"
    path.write_text('max_jobs = 3\nquota = "1G\n')
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(path) in str(info.value) and "TOML" in str(info.value) and "line 2" in str(info.value)


def test_missing_file(tmp_path):
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(path) in str(info.value) and "no such" in str(info.value)


def test_unreadable_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path))  # a directory
    assert str(tmp_path) in str(info.value)


def test_parse_config_names_its_source():
    with pytest.raises(ConfigError) as info:
        parse_config({"bogus": 1}, "my.toml")
    assert str(info.value).startswith("my.toml: bogus: ")
    with pytest.raises(ConfigError) as info:
        parse_config({"bogus": 1})
    assert str(info.value).startswith("<config>: bogus: ")


# -- any input: a Config or a ConfigError, nothing else ----------------------------------------

KEYS = ["sweep_interval", "on_crash", "min_free", "max_jobs", "quota", "max_files", "retention", "templates",
        "areas", "completed", "failed", "cancelled", "crashed", "grace", "media", "default", "output", "x"]
scalars = st.one_of(
    st.booleans(), st.integers(-10, 10 ** 20).filter(lambda n: n < 2 ** 63), st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["7d", "never", "0s", "1G", "5%", "150%", "keep", "scratch", "input", "resume",
                     "quarantine", "-1", "1e9d", "9" * 30 + "w"]),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), children,
                                               max_size=4)),
    max_leaves=12,
)
junk_configs = st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), values, max_size=5)


def mostly(valid, junk=scalars):
    return st.one_of(valid, valid, valid, junk)


durations = mostly(st.one_of(st.sampled_from(["7d", "24h", "90s", "never", "0s", "500ms", "2w"]),
                             st.integers(0, 10 ** 6), st.floats(0, 10 ** 6)))
sizes = mostly(st.one_of(st.sampled_from(["10G", "512M", "0", "1.5K"]), st.integers(0, 2 ** 40)))
retentions = st.dictionaries(st.sampled_from(["completed", "failed", "cancelled", "crashed", "grace"]), durations,
                             max_size=5)
areas = st.dictionaries(mostly(st.sampled_from(["audio", "video", "output", "temp", "in"]), st.text(max_size=5)),
                        mostly(st.sampled_from(["keep", "scratch", "input"])), max_size=4)
templates = st.dictionaries(
    mostly(st.sampled_from(["media", "default", "light", "a.b"]), st.text(max_size=5)),
    st.fixed_dictionaries({}, optional={"areas": areas, "retention": retentions, "quota": sizes,
                                        "max_files": mostly(st.integers(0, 10 ** 6))}),
    max_size=3,
)
structured_configs = st.fixed_dictionaries({}, optional={
    "sweep_interval": durations, "on_crash": mostly(st.sampled_from(["quarantine", "resume"])),
    "min_free": mostly(st.one_of(sizes, st.sampled_from(["5%", "0%", "99%", "12.5%"]))),
    "max_jobs": mostly(st.integers(0, 10 ** 6)), "quota": sizes, "max_files": mostly(st.integers(0, 10 ** 6)),
    "retention": retentions, "templates": templates,
})
configs = st.one_of(junk_configs, structured_configs)


def assert_usable(cfg: Config) -> None:
    assert "default" in cfg.templates
    assert cfg.sweep_interval > 0 and math.isfinite(cfg.sweep_interval)
    assert cfg.on_crash in ("quarantine", "resume")
    assert 0 <= cfg.min_free_fraction < 1 and cfg.min_free_bytes >= 0
    for name, t in cfg.templates.items():
        assert isinstance(t, Template) and t.name == name and t.areas
        assert all(isinstance(k, AreaKind) for k in t.areas.values())
        assert 0 <= t.quota < 2 ** 63 and 0 <= t.max_files < 2 ** 63
        assert math.isfinite(t.grace) and t.grace >= 0
        for state, after in t.retention.items():
            assert state in ("completed", "failed", "cancelled", "crashed")
            assert after is None or (math.isfinite(after) and after >= 0)


def config_or_its_error(data: dict, source: str):
    """The Config ``data`` makes, or None when it is refused with a ConfigError naming ``source``."""
    try:
        return parse_config(data, source)
    except ConfigError as exc:
        assert str(exc).startswith(f"{source}: ")
        return None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs)
def test_random_configs_give_a_config_or_a_config_error(data):
    cfg = config_or_its_error(data, "rand.toml")
    if cfg is not None:
        assert_usable(cfg)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["completed", "failed", "cancelled", "crashed", "grace"]),
                       st.one_of(scalars, st.sampled_from(["1d", "12h", "never", "30m", 0, 60, 2.5])), max_size=5),
       st.dictionaries(st.sampled_from(["audio", "video", "output", "tmp", "in"]),
                       st.sampled_from(["keep", "scratch", "input"]), min_size=1, max_size=5))
def test_random_templates(retention, areas):
    data = {"retention": retention, "templates": {"media": {"areas": areas, "retention": retention}}}
    cfg = config_or_its_error(data, "t.toml")
    if cfg is None:
        return
    assert_usable(cfg)
    assert {a: k.value for a, k in cfg.template("media").areas.items()} == areas


def test_leases_top_level_and_per_template():
    config = parse_toml_config('max_running = "14d"\nmax_extensions = 2\n[templates.short]\n'
                               'areas = { o = "keep" }\nmax_running = "1h"\n[templates.free]\n'
                               'areas = { o = "keep" }\nmax_running = "never"\nmax_extensions = 0\n')
    assert (config.template("default").max_running, config.template("default").max_extensions) == (14 * 86400.0, 2)
    assert (config.template("short").max_running, config.template("short").max_extensions) == (3600.0, 2)
    assert (config.template("free").max_running, config.template("free").max_extensions) == (None, 0)
    assert parse_toml_config("").template("default").max_running is None
    for bad, key in (('max_running = "soon"', "max_running"), ("max_running = 0", "max_running"),
                     ("max_extensions = -1", "max_extensions")):
        with pytest.raises(ConfigError) as info:
            parse_toml_config(bad)
        assert f": {key}:" in str(info.value)


def test_a_bad_metrics_listen_is_a_config_error():
    assert parse_toml_config('metrics_listen = "127.0.0.1:9105"\n').metrics_listen == "127.0.0.1:9105"
    for bad in ('"9105"', '"host:port"', '"127.0.0.1:70000"', "9105"):
        with pytest.raises(ConfigError) as info:
            parse_toml_config(f"metrics_listen = {bad}\n")
        assert "metrics_listen" in str(info.value)
