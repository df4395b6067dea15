"""The operations called from many threads at once, as libfuse's workers call them (no mount):
a quota lets exactly its bytes through whatever the interleaving, one of several racing
endings wins and the others are refused, and writes racing an ending either land before the
seal or are refused (docs/spec.md §4, §8)."""

from __future__ import annotations

import errno
import json
import os
import threading

from wsfs.fuse.binding import FuseOSError

THREADS = 8


def run_all(targets) -> None:
    start = threading.Barrier(len(targets))
    errors: list[BaseException] = []

    def wrapped(target):
        start.wait()
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - reported below, whatever it is
            errors.append(exc)
    threads = [threading.Thread(target=wrapped, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors


def test_a_quota_lets_exactly_its_bytes_through_racing_writers(fs):
    f = fs()
    f.command("/.wsfs/control", "create q quota=100K")
    outcomes: list[str] = []

    def writer(i: int):
        def go():
            path = f"/workspaces/q/output/w{i}"
            for n in range(10):
                try:
                    f.write(path if n == 0 else path + f".{n}", b"x" * 4096)
                    outcomes.append("ok")
                except FuseOSError as exc:
                    assert exc.errno == errno.EDQUOT
                    outcomes.append("refused")
        return go
    run_all([writer(i) for i in range(THREADS)])
    usage = f.job("q")["usage"]
    assert usage["bytes"] <= 100 * 1024
    assert outcomes.count("ok") * 4096 == usage["bytes"]  # every acknowledged write is counted, no more
    assert outcomes.count("refused") == THREADS * 10 - 25  # 25 writes of 4 KiB fit in 100 KiB


def test_of_racing_endings_one_wins_and_the_others_are_refused(fs):
    f = fs()
    f.ops.mkdir("/workspaces/j", 0o755)
    f.write("/workspaces/j/output/r", b"r")
    results: list[str] = []

    def ender(word: str):
        def go():
            try:
                f.command("/workspaces/j/.state", word)
                results.append(word)
            except FuseOSError as exc:
                assert exc.errno == errno.EPERM
                results.append("refused")
        return go
    run_all([ender(w) for w in ("completed", "failed", "cancelled") * 3])
    winners = [r for r in results if r != "refused"]
    assert len(winners) == 1 and results.count("refused") == 8
    assert f.read("/workspaces/j/.state").decode().strip() == winners[0]
    receipt = json.loads(f.read("/workspaces/j/receipt.json"))
    assert receipt["state"] == winners[0]


def test_writes_racing_an_ending_land_before_the_seal_or_are_refused(fs):
    f = fs()
    f.ops.mkdir("/workspaces/j", 0o755)
    landed: list[int] = []

    def writer():
        for n in range(200):
            try:
                f.write(f"/workspaces/j/output/f{n:03d}", b"%d" % n)
                landed.append(n)
            except FuseOSError as exc:
                assert exc.errno == errno.EROFS
                return

    def ender():
        f.command("/workspaces/j/.state", "completed")
    run_all([writer, ender])
    receipt = json.loads(f.read("/workspaces/j/receipt.json"))
    assert sorted(o["path"] for o in receipt["outputs"]) == [f"output/f{n:03d}" for n in sorted(landed)]
    assert sorted(os.listdir(f.ops.service.tree.data_dir + "/jobs/j/output")) == [f"f{n:03d}" for n in sorted(landed)]
