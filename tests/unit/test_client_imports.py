"""The client side stays light (docs/architecture.md "Layers"): ``import wsfs.client`` loads
nothing of the daemon, the store or their libraries."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO


def test_importing_the_client_loads_none_of_the_daemons_modules():
    code = ("import sys, wsfs.client; print(sorted(m for m in sys.modules if m in "
            "('lmdb', 'psutil', 'msgpack', 'mfusepy', 'click') or m.startswith('wsfs.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO))).stdout
    assert out.strip() == "['wsfs.client', 'wsfs.client.mounts']"
