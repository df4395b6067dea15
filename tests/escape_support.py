"""A canary tree outside the data dir, and everything an escape could change of it: the
escape tests of the tree (``core/test_tree.py``) and of the mount
(``stress/test_stress_escape.py``) plant links to it and check it stays byte for byte,
mode for mode, time for time as it was."""

from __future__ import annotations

import os
import stat

VICTIM = b"the canary's secret\n"
FIXED_NS = 1_600_000_000_000_000_000


def make_mirror(base: str) -> None:
    """The shape every operation below expects: victim, sub/victim, empty/, lnk."""
    os.makedirs(os.path.join(base, "sub"))
    os.mkdir(os.path.join(base, "empty"))
    for rel in ("victim", "sub/victim"):
        with open(os.path.join(base, rel), "wb") as f:
            f.write(VICTIM)
        os.chmod(os.path.join(base, rel), 0o640)
        os.setxattr(os.path.join(base, rel), "user.canary", b"1")
    os.symlink("victim", os.path.join(base, "lnk"))
    os.chmod(os.path.join(base, "sub"), 0o750)
    for rel in ("victim", "sub/victim", "lnk", "empty", "sub", "."):
        os.utime(os.path.join(base, rel), ns=(FIXED_NS, FIXED_NS), follow_symlinks=False)


def snapshot(base: str) -> dict:
    """Everything an escape could change (atime aside): names, types, modes, owners, times, data, xattrs."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        for name in [""] + dirnames + filenames if dirpath == base else dirnames + filenames:
            path = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(path)
            entry = [st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_nlink, st.st_mtime_ns, st.st_ctime_ns,
                     st.st_ino]
            if stat.S_ISLNK(st.st_mode):
                entry.append(os.readlink(path))
            else:
                entry.append({a: os.getxattr(path, a, follow_symlinks=False)
                              for a in sorted(os.listxattr(path, follow_symlinks=False))})
                if stat.S_ISREG(st.st_mode):
                    with open(path, "rb") as f:
                        entry.append(f.read())
            out[os.path.relpath(path, base)] = entry
    return out
