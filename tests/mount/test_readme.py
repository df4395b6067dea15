"""The README's shell examples, run as written against a real mount in a scratch dir.

Every ``console`` and ``sh`` block of README.md runs, in README order, in one scratch world:
a mount whose config is the README's own ``<!-- readme-test: config -->`` TOML blocks, a HOME
with the git repository ``~/proj`` the development-workspace session uses, ``/incoming`` and
``/srv`` of the seeds under the scratch dir, and the README's paths (``/mnt/wsfs`` ...) mapped
there.  A block that cannot run unattended carries ``<!-- readme-test: skip: WHY -->`` (or its
section ``<!-- readme-test: skip-section: WHY -->``); one with neither runs, so a README change
that breaks an example, or adds one that cannot run, fails ``make test``.

``console`` blocks run command by command (``$ `` lines; each block starts in the user's own
directory, which a ``cd`` changes for the commands after it): a command shown with an error
message (``bash: ...``, ``wsfs: ...``) must fail with that message; any other must succeed, and
print every word of the output shown that holds no digit (ages, sizes, hashes and timings vary).
``sh`` blocks run whole, with ``set -e``.

ffmpeg is not installed here: a stand-in on PATH copies its input to its output, so that the
examples' own commands (``wsfs run``, the album loop) are what is checked.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.mount

_DIRECTIVE = re.compile(r"<!-- readme-test: (skip|skip-section|config)(?::\s*(.*?))? -->")
FFMPEG = """#!/bin/sh
# A stand-in for ffmpeg in tests/test_readme.py: copies the file after -i to the last argument.
while [ $# -gt 1 ]; do
  case "$1" in -i) src=$2; shift 2;; -loglevel) shift 2;; *) shift;; esac
done
exec cp "$src" "$1"
"""


@dataclasses.dataclass
class Block:
    line: int
    lang: str
    text: str
    skip: str | None = None
    config: bool = False


def readme_blocks(text: str) -> list[Block]:
    blocks, section_skip, pending, lines = [], None, None, text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section_skip = None
        directive = _DIRECTIVE.search(line)
        if directive:
            kind, why = directive.groups()
            if kind == "skip-section":
                section_skip = why
            else:
                pending = (kind, why)
        if line.startswith("```") and len(line) > 3 or line == "```":
            lang, body = line[3:].strip(), []
            i += 1
            while not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            block = Block(i - len(body), lang, "\n".join(body) + "\n", skip=section_skip)
            if pending:
                if pending[0] == "skip":
                    block.skip = pending[1]
                else:
                    block.config = True
            pending = None
            blocks.append(block)
        elif line.strip() and not directive:
            pending = None if not line.startswith("<!--") else pending
        i += 1
    return blocks


def commands(block: Block) -> list[tuple[str, list[str]]]:
    """(command, lines shown after it) of a console block."""
    out: list[tuple[str, list[str]]] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            out.append((line[2:], []))
        elif out:
            out[-1][1].append(line)
    return out


@pytest.fixture
def world(mount_factory, tmp_path):
    """The scratch world the README's paths are mapped into, and its mount."""
    home, srv, incoming, work, bin_dir = (tmp_path / n for n in ("home", "srv", "incoming", "work", "bin"))
    for d in (home, srv, incoming / "abbey-road", work, bin_dir):
        d.mkdir(parents=True)
    (bin_dir / "ffmpeg").write_text(FFMPEG)
    (bin_dir / "ffmpeg").chmod(0o755)
    for n in (1, 2):
        (incoming / "abbey-road" / f"{n:02d}.wav").write_bytes(b"RIFF-track-%d" % n)
    (work / "scene.blend").write_bytes(b"BLENDER")
    (work / "in.wav").write_bytes(b"RIFF-in")
    mapping = {"/mnt/wsfs": None, "/etc/wsfs/wsfs.toml": str(REPO / "etc" / "wsfs.toml"),
               "/home/me": str(home), "/srv/": f"{srv}/", "/incoming/": f"{incoming}/"}
    text = (REPO / "README.md").read_text()
    blocks = readme_blocks(text)
    config = "".join(b.text for b in blocks if b.config)
    for old, new in mapping.items():
        if new is not None:
            config = config.replace(old, new)
    m = mount_factory(config=config)
    mapping["/mnt/wsfs"] = str(m.mnt)
    env = dict(os.environ, HOME=str(home), PATH=f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
               WSFS_MOUNT=str(m.mnt), PYTHONPATH=str(REPO), GIT_AUTHOR_NAME="Me", GIT_AUTHOR_EMAIL="me@example.org",
               GIT_COMMITTER_NAME="Me", GIT_COMMITTER_EMAIL="me@example.org")
    proj = home / "proj"
    (proj / "data" / "knowledge").mkdir(parents=True)
    (proj / "app.py").write_text("VALUE = 1\n")
    (proj / "data" / "knowledge" / "facts.json").write_text('{"a":1}\n')  # 8 bytes, as in the session
    (proj / "data" / "knowledge" / "skip.tmp").write_text("x\n")
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "start"]):
        subprocess.run(["git", *args], cwd=proj, env=env, check=True, capture_output=True)
    return blocks, mapping, env, work, m


def mapped(text: str, mapping: dict) -> str:
    for old, new in mapping.items():
        text = text.replace(old, new)
    return text


def run_console(block: Block, mapping: dict, env: dict, cwd: Path) -> None:
    state = cwd.parent / "readme-cwd"  # where the last command left the shell
    for command, shown in commands(block):
        command = mapped(command, mapping)
        result = subprocess.run(["bash", "-c", f"{command}\nrc=$?\npwd > \"$README_CWD\"\nexit $rc"], cwd=cwd,
                                env=dict(env, README_CWD=str(state)), capture_output=True,
                                text=True, timeout=300)
        cwd = Path(state.read_text().strip() or cwd)
        where = f"README.md:{block.line}: `{command}`"
        errors = [mapped(s, mapping) for s in shown if s.startswith(("bash: ", "wsfs: "))]
        if errors:
            assert result.returncode != 0, f"{where} should have failed:\n{result.stdout}"
            message = errors[0].removeprefix("bash: ")
            assert message in result.stderr, f"{where}: expected {message!r} in:\n{result.stderr}"
            continue
        assert result.returncode == 0, f"{where} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        words = {w for s in shown for w in mapped(s, mapping).split() if not re.search(r"\d", w)}
        seen = (result.stdout + result.stderr).split()  # a terminal shows both
        missing = sorted(w for w in words if w not in seen)
        assert not missing, f"{where}: the output lacks {missing}:\n{result.stdout}{result.stderr}"


def test_every_shell_example_runs_as_written(world):
    blocks, mapping, env, work, m = world
    shell = [b for b in blocks if b.lang in ("console", "sh", "shell", "bash")]
    assert len(shell) >= 6
    ran = 0
    for block in shell:  # each block a new shell session, in the user's own directory
        if block.skip is not None:
            assert block.skip.strip(), f"README.md:{block.line}: a skipped example must say why"
            continue
        if block.lang == "console":
            run_console(block, mapping, env, work)
        else:
            result = subprocess.run(["bash", "-ec", mapped(block.text, mapping)], cwd=work, env=env,
                                    capture_output=True, text=True, timeout=300)
            assert result.returncode == 0, (f"README.md:{block.line} failed ({result.returncode}):\n"
                                            f"{result.stdout}\n{result.stderr}")
        ran += 1
    assert ran >= 5  # the tour, the CLI, the development session, prune-worktrees, seed 002
    # The album went where the README says, whole.
    assert sorted(p.name for p in Path(mapping["/srv/"], "library", "album-7").iterdir()) == ["01.flac", "02.flac"]


def test_examples_that_do_not_run_say_why():
    blocks = readme_blocks((REPO / "README.md").read_text())
    skipped = [b for b in blocks if b.lang in ("console", "sh") and b.skip is not None]
    assert skipped and all(b.skip.strip() for b in skipped)
    assert [b for b in blocks if b.config], "the README's configs for the examples are marked"
