"""The shortest user story through a real mount and a real shell."""

import pytest
from conftest import sh

pytestmark = pytest.mark.mount


def test_mkdir_echo_complete_cat(wsfs_mount):
    ws = wsfs_mount.ws
    sh("mkdir workspaces/j1 && echo hi > workspaces/j1/output/a.txt && echo t > workspaces/j1/temp/t",
       cwd=wsfs_mount.mnt)
    assert sh("cat workspaces/j1/.state", cwd=wsfs_mount.mnt).stdout == "running\n"
    sh("echo completed > workspaces/j1/.state", cwd=wsfs_mount.mnt)
    assert (ws / "j1" / ".state").read_text() == "completed\n"
    assert not (ws / "j1" / "temp").exists()
    assert (ws / "j1" / "receipt.json").exists()
