"""The ``wsfs`` command with no mount (docs/spec.md §10): help, version, completion, the
effective configuration and its errors, and the refusals of commands that need a mount or a
data dir.  click's CliRunner for output and exit codes, a real process where a shell's view
matters (exit code 78 for a bad configuration at mount).

Exit codes: 0 done, 1 error, 2 usage, 78 configuration.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
from click.testing import CliRunner
from conftest import REPO, is_mounted, wsfs_cli

from wsfs.client.cli import main

NOT_A_MOUNT = [
    ["create", "j"],
    ["create"],
    ["list"],
    ["list", "--json"],
    ["show", "j"],
    ["state", "j", "completed"],
    ["run", "--job", "j", "--", "true"],
    ["restore", "j"],
    ["resume", "j"],
    ["sweep"],
    ["unmount"],
]

GOOD_CONFIG = """
sweep_interval = "5s"
max_jobs = 3
min_free = "1G"

[retention]
failed = "2d"

[templates.media]
areas = { audio = "scratch", video = "scratch", output = "keep" }
quota = "50G"
[templates.media.retention]
failed = "3d"
"""


def cli(*args, env=None):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_config_prints_json(tmp_path):
    result = cli("config")
    assert result.exit_code == 0, result.output
    config = json.loads(result.stdout)
    assert "default" in config["templates"]

    good = tmp_path / "wsfs.toml"
    good.write_text("[templates.media.areas]\naudio = \"scratch\"\noutput = \"keep\"\n")
    result = cli("config", "--config", str(good))
    assert result.exit_code == 0, result.output
    assert "media" in json.loads(result.stdout)["templates"]

    bad = tmp_path / "bad.toml"
    bad.write_text("this is [ not toml\n")
    result = cli("config", "--config", str(bad))
    assert result.exit_code == 2
    assert str(bad) in result.stderr


def _commands():
    return sorted(main.commands)


@pytest.mark.parametrize("command", _commands())
def test_help_shows_an_example(command):
    result = cli(command, "--help")
    assert result.exit_code == 0
    assert "Example" in result.stdout, f"wsfs {command} --help has no example"
    assert f"wsfs {command}" in result.stdout.split("Example", 1)[1]


def test_group_help_and_version():
    result = cli("--help")
    assert result.exit_code == 0
    for command in _commands():
        assert command in result.stdout
    assert cli("--version").exit_code == 0
    assert cli("no-such-command").exit_code == 2


@pytest.mark.parametrize("args", NOT_A_MOUNT, ids=lambda a: " ".join(a))
def test_commands_refuse_a_path_that_is_not_a_mount(tmp_path, args):
    plain = tmp_path / "plain"
    plain.mkdir()
    env = {"WSFS_DATA": str(tmp_path / "no-data"), "WSFS_MOUNT": str(plain)}
    if args[0] == "unmount":
        args = args + [str(plain)]
    else:
        args = args[:1] + ["--mount", str(plain)] + args[1:]
    result = cli(*args, env=env)
    assert result.exit_code == 1, result.output
    assert str(plain) in result.stderr
    assert re.search(r"not (a )?mounted|not a wsfs mount", result.stderr), result.stderr
    assert not os.listdir(plain), "nothing may be written into a bare mount point"


def test_a_real_process_against_no_mount(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    proc = wsfs_cli("create", "j", "--mount", str(plain))
    assert proc.returncode == 1
    assert proc.stderr.startswith("wsfs: ")
    assert f"{plain} is not a mounted wsfs" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_events_without_a_mount(tmp_path):
    result = cli("events", "--mount", str(tmp_path))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"wsfs: {tmp_path} is not a mounted wsfs")


def test_sweep_and_restore_need_a_mount(tmp_path):
    for args in (["sweep"], ["restore", "j"], ["resume", "j"], ["status"]):
        result = cli(*args, "--mount", str(tmp_path))
        assert result.exit_code == 1, args
        assert f"{tmp_path} is not a mounted wsfs" in result.stderr


def test_completion_script_for_bash():
    result = CliRunner().invoke(main, [], env={"_WSFS_COMPLETE": "bash_source"}, prog_name="wsfs")
    assert result.exit_code == 0
    assert "_wsfs_completion()" in result.stdout and "complete -o nosort -F _wsfs_completion wsfs" in result.stdout


def test_config_good_and_bad(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('sweep_interval = "5m"\n[templates.media]\nareas = { audio = "scratch", output = "keep" }\n')
    result = cli("config", "--config", str(good))
    assert result.exit_code == 0
    config = json.loads(result.stdout)
    assert config["sweep_interval"] == 300.0 and config["templates"]["media"]["areas"]["audio"] == "scratch"

    bad = tmp_path / "bad.toml"
    bad.write_text('sweep_interval = "soon"\n')
    result = cli("config", "--config", str(bad))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"wsfs: {bad}: sweep_interval: not a duration")
    result = cli("config", "--config", str(tmp_path / "missing.toml"))
    assert result.exit_code == 2 and "no such config file" in result.stderr
    sample = cli("config", "--config", str(REPO / "etc" / "wsfs.toml"))
    assert sample.exit_code == 0, sample.output  # the sample installed as /etc/wsfs/wsfs.toml is valid


def test_doctor_refuses_what_is_not_a_data_dir(tmp_path):
    result = cli("doctor", "--data", str(tmp_path))
    assert result.exit_code == 1 and result.stderr == f"wsfs: {tmp_path} is not a wsfs data dir (it has no store/)\n"
    result = cli("doctor", "--mount", str(tmp_path / "nomount"), env={"WSFS_DATA": str(tmp_path / "nodata")})
    assert result.exit_code == 1
    nomount, nodata = tmp_path / "nomount", tmp_path / "nodata"
    assert result.stderr == (f"wsfs: {nomount} is not a mounted wsfs (mount it with: wsfs mount "
                             f"{nomount}) and {nodata} has no store: give --mount or --data\n")
    assert cli("doctor", "--repair=yes").exit_code == 2


@pytest.mark.parametrize("text, key", [
    ('sweep_intervall = "1s"\n', "sweep_intervall"),
    ('[retention]\nfailed = "2 days"\n', "retention.failed"),
    ('on_crash = "explode"\n', "on_crash"),
    ('[templates.media]\nareas = { audio = "scrach" }\n', "templates.media.areas.audio"),
])
@pytest.mark.parametrize("foreground", [False, True], ids=["background", "foreground"])
def test_mount_with_a_bad_config_exits_78_and_mounts_nothing(tmp_path, text, key, foreground):
    """78 (EX_CONFIG): the status the units never restart on (RestartPreventExitStatus=78)."""
    config = tmp_path / "bad.toml"
    config.write_text(text)
    mnt, data = tmp_path / "mnt", tmp_path / "data"
    mnt.mkdir()
    args = ["mount", str(mnt), "--data", str(data), "--config", str(config)] + (["--foreground"] if foreground else [])
    try:
        result = wsfs_cli(*args)
        assert result.returncode == 78, result.stderr
        assert f"{config}: {key}:" in result.stderr
        assert "Traceback" not in result.stderr
        assert not is_mounted(mnt)
        assert not data.exists()
    finally:
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)


def test_mount_with_a_config_that_is_not_toml_exits_78(tmp_path):
    config = tmp_path / "broken.toml"
    config.write_text("[retention\nfailed = 1d\n")
    (tmp_path / "mnt").mkdir()
    result = wsfs_cli("mount", str(tmp_path / "mnt"), "--data", str(tmp_path / "data"), "--config", str(config))
    assert result.returncode == 78 and str(config) in result.stderr and "TOML" in result.stderr
    assert not is_mounted(tmp_path / "mnt")


def test_config_command_prints_the_effective_configuration(tmp_path):
    config = tmp_path / "wsfs.toml"
    config.write_text(GOOD_CONFIG)
    shown = json.loads(wsfs_cli("config", "--config", str(config)).stdout)
    assert shown["sweep_interval"] == 5.0 and shown["max_jobs"] == 3 and shown["on_crash"] == "quarantine"
    assert shown["min_free_bytes"] == 1 << 30
    default, media = shown["templates"]["default"], shown["templates"]["media"]
    assert default["areas"] == {"input": "input", "output": "keep", "temp": "scratch"}
    assert default["retention"] == {"completed": None, "failed": 2 * 86400.0, "cancelled": 86400.0,
                                    "crashed": 7 * 86400.0}
    assert default["grace"] == 86400.0
    assert media["areas"] == {"audio": "scratch", "video": "scratch", "output": "keep"}
    assert media["retention"]["failed"] == 3 * 86400.0 and media["quota"] == 50 << 30

    bad = tmp_path / "bad.toml"
    bad.write_text('max_job = 3\n')
    result = wsfs_cli("config", "--config", str(bad))
    assert result.returncode == 2 and f"{bad}: max_job:" in result.stderr
    result = wsfs_cli("config", "--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 2 and "missing.toml" in result.stderr


def test_config_command_without_a_file_prints_the_defaults(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from wsfs.client.cli import main
    from wsfs.core import config as config_module

    # In-process, so that this machine's own /etc/wsfs/wsfs.toml (make install) does not count.
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_FILE", str(tmp_path / "absent.toml"))
    result = CliRunner().invoke(main, ["config"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["sweep_interval"] == 60.0 and shown["on_crash"] == "quarantine" and shown["max_jobs"] == 0
    assert shown["min_free_fraction"] == 0.05
    assert list(shown["templates"]) == ["default"]
    assert shown["templates"]["default"]["retention"] == {"completed": None, "failed": 7 * 86400.0,
                                                          "cancelled": 86400.0, "crashed": 7 * 86400.0}
    assert shown["templates"]["default"]["grace"] == 86400.0


def test_sample_config_is_what_config_prints(tmp_path):
    shown = json.loads(wsfs_cli("config", "--config", str(REPO / "etc" / "wsfs.toml")).stdout)
    assert shown["templates"]["media"]["areas"] == {"audio": "scratch", "video": "scratch", "output": "keep"}
    assert shown["sweep_interval"] == 60.0 and shown["min_free_fraction"] == 0.05
