"""``wsfs unmount`` of a live mount (docs/spec.md §11): it waits for the daemon's clean
shutdown; a mount still in use names the process that holds it, then is detached lazily."""

from __future__ import annotations

import subprocess

import pytest
from click.testing import CliRunner
from conftest import is_mounted, mount_state, sh

from wsfs.client.cli import main

WAIT = 30.0  # a deadline for things that must happen, never a measured duration


@pytest.mark.mount
def test_unmount_waits_for_the_clean_shutdown(mount_factory):
    m = mount_factory()
    sh("mkdir workspaces/j && echo x > workspaces/j/output/x && echo completed > workspaces/j/.state", cwd=m.mnt)
    result = CliRunner().invoke(main, ["unmount", str(m.mnt)])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"unmounted {m.mnt}\n"
    assert not is_mounted(m.mnt)
    assert m.proc.wait(timeout=WAIT) == 0
    assert mount_state(m.data) == "clean"
    assert (m.data / "jobs" / "j" / "receipt.json").exists()


@pytest.mark.mount
def test_unmount_busy_names_the_holder_then_lazy_detaches(mount_factory):
    m = mount_factory()
    sh("mkdir workspaces/j && echo kept > workspaces/j/output/kept.txt", cwd=m.mnt)
    holder = subprocess.Popen(["sleep", "600"], cwd=m.mnt / "workspaces" / "j" / "output")
    try:
        result = CliRunner().invoke(main, ["unmount", str(m.mnt)])
        assert result.exit_code == 1
        message = result.stderr.strip()
        assert message.startswith(f"wsfs: cannot unmount {m.mnt}: it is busy")
        assert f"sleep (pid {holder.pid})" in message and "--lazy" in message
        # Nothing happened: still mounted, still served, nothing lost.
        assert is_mounted(m.mnt) and m.proc.poll() is None
        assert (m.ws / "j" / "output" / "kept.txt").read_text() == "kept\n"

        result = CliRunner().invoke(main, ["unmount", "--lazy", str(m.mnt)])
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith(f"detached {m.mnt}: held by sleep (pid {holder.pid})")
        assert not is_mounted(m.mnt)
        assert m.proc.poll() is None  # still serving the holder's cwd
    finally:
        holder.kill()
        holder.wait()
    assert m.proc.wait(timeout=WAIT) == 0  # the last reference went: it stops on its own, cleanly
    assert mount_state(m.data) == "clean"
    assert (m.data / "jobs" / "j" / "output" / "kept.txt").read_text() == "kept\n"
