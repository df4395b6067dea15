"""``wsfs.fuse.coherence``: the tables that keep the kernel's caches true under libfuse's path
API (docs/architecture.md), each driven alone: ``LinkedNames`` (the names of multiply-linked
files), ``HiddenNames`` (libfuse's names of files unlinked while open, removed at the last
close in every order of release and hide), ``PageInvalidator`` (never waits on itself)."""

from __future__ import annotations

import threading
import time

import pytest

from wsfs.fuse import coherence
from wsfs.fuse.coherence import HiddenNames, LinkedNames, PageInvalidator

A = ("jobs", 11)
B = ("jobs", 12)


# -- LinkedNames ------------------------------------------------------------------------------


def test_linked_names_give_the_other_names_of_a_file():
    names = LinkedNames()
    assert not names
    names.note(A, "/w/j/output/a")
    names.note(A, "/w/j/output/b")
    names.note(B, "/w/j/output/c")
    assert names and A in names
    assert names.others(A, "/w/j/output/a") == ["/w/j/output/b"]
    assert sorted(names.others(A, "/elsewhere")) == ["/w/j/output/a", "/w/j/output/b"]
    names.forget(A, "/w/j/output/b")
    assert names.others(A, "/w/j/output/a") == []
    names.forget(A, "/w/j/output/a")
    assert A not in names and B in names
    names.forget(A, "/never/noted")  # nothing to forget: no error


def test_linked_names_follow_a_rename_of_a_directory_and_an_exchange():
    names = LinkedNames()
    names.note(A, "/w/j/output/d/a")
    names.note(A, "/w/j/output/x")
    names.note(B, "/w/j/temp/e/b")
    names.moved("/w/j/output/d", "/w/j/temp/d2")
    assert sorted(names.others(A, "")) == ["/w/j/output/x", "/w/j/temp/d2/a"]
    names.moved("/w/j/temp/d2", "/w/j/temp/e", exchange=True)
    assert sorted(names.others(A, "")) == ["/w/j/output/x", "/w/j/temp/e/a"]
    assert names.others(B, "") == ["/w/j/temp/d2/b"]
    names.moved("/w/j/output/xy", "/w/j/output/z")  # a name that only starts alike stays
    assert "/w/j/output/x" in names.others(A, "")


def test_linked_names_start_again_past_their_bound(monkeypatch):
    monkeypatch.setattr(LinkedNames, "MAX_FILES", 2)
    names = LinkedNames()
    names.note(("jobs", 1), "/a")
    names.note(("jobs", 2), "/b")
    names.note(("jobs", 2), "/b2")  # a file already known: no reset
    assert ("jobs", 1) in names
    names.note(("jobs", 3), "/c")
    assert ("jobs", 1) not in names and names.others(("jobs", 3), "") == ["/c"]


# -- HiddenNames ------------------------------------------------------------------------------


def test_a_hidden_name_goes_at_the_last_close_when_the_hide_came_first():
    hidden = HiddenNames()
    hidden.opened(A)
    hidden.opened(A)
    assert hidden.hidden(A, "j/output/.fuse_hidden0001") is False  # still open: kept
    assert hidden.links(A) == 1 and hidden
    assert hidden.closed(A) == []  # one handle left
    assert hidden.closed(A) == ["j/output/.fuse_hidden0001"]
    assert hidden.links(A) == 0 and not hidden


def test_a_hidden_name_goes_at_once_when_the_last_close_came_first():
    """libfuse #746: the RELEASE raced ahead of the rename that hides the file."""
    hidden = HiddenNames()
    hidden.opened(A)
    assert hidden.closed(A) == []
    assert hidden.hidden(A, "j/output/.fuse_hidden0002") is True  # nobody needs it: remove now
    assert hidden.links(A) == 0


def test_hidden_names_forgotten_taken_below_a_tree_and_moved():
    hidden = HiddenNames()
    for key in (A, B):
        hidden.opened(key)
    hidden.hidden(A, "j/output/.fuse_hidden1")
    hidden.hidden(A, "j/output/.fuse_hidden2")
    hidden.hidden(B, "k/temp/.fuse_hidden3")
    hidden.forget("j/output/.fuse_hidden2")
    assert hidden.links(A) == 1
    hidden.moved("jobs", "k/temp", "k/output")
    assert hidden.take_below("jobs", "k") == ["k/output/.fuse_hidden3"]
    assert hidden.take_below("quarantine", "j") == []  # another root
    assert hidden.take_below("jobs", "j") == ["j/output/.fuse_hidden1"]
    assert not hidden
    assert hidden.closed(A) == [] and hidden.closed(B) == []


def test_hidden_names_follow_an_exchange_of_two_directories():
    hidden = HiddenNames()
    hidden.opened(A)
    hidden.opened(B)
    hidden.hidden(A, "j/temp/a/.fuse_hidden1")
    hidden.hidden(B, "j/temp/b/.fuse_hidden2")
    hidden.moved("jobs", "j/temp/a", "j/temp/b", exchange=True)
    assert hidden.closed(A) == ["j/temp/b/.fuse_hidden1"]
    assert hidden.closed(B) == ["j/temp/a/.fuse_hidden2"]


def test_hidden_names_under_racing_closes_and_hides_are_removed_exactly_once():
    for _round in range(200):
        hidden, removed = HiddenNames(), []
        hidden.opened(A)
        start = threading.Barrier(2)

        def close():
            start.wait()
            removed.extend(hidden.closed(A))

        def hide():
            start.wait()
            if hidden.hidden(A, "j/output/.fuse_hiddenX"):
                removed.append("j/output/.fuse_hiddenX")
        threads = [threading.Thread(target=close), threading.Thread(target=hide)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert removed == ["j/output/.fuse_hiddenX"]
        assert hidden.links(A) == 0


# -- PageInvalidator --------------------------------------------------------------------------


def test_the_invalidator_runs_every_path_on_its_own_thread(monkeypatch):
    seen = []
    monkeypatch.setattr(coherence, "invalidate_path",
                        lambda path: seen.append((path, threading.current_thread().name)))
    invalidate = PageInvalidator()
    invalidate([])  # nothing: no thread
    invalidate(["/w/j/output/a", "/w/j/output/b"])
    assert seen == [("/w/j/output/a", "wsfs-invalidate"), ("/w/j/output/b", "wsfs-invalidate")]


def test_the_caller_waits_at_most_a_moment_for_an_invalidation_that_blocks(monkeypatch):
    release = threading.Event()
    monkeypatch.setattr(coherence, "invalidate_path", lambda path: release.wait(10))
    monkeypatch.setattr(PageInvalidator, "WAIT", 0.05)
    invalidate = PageInvalidator()
    started = time.monotonic()
    invalidate(["/w/j/output/busy"])
    assert time.monotonic() - started < 5  # not the 10 s the page lock would have held it
    release.set()


def test_a_failed_invalidation_is_logged_and_the_next_ones_still_run(monkeypatch, caplog):
    seen = []

    def flaky(path):
        if path == "/bad":
            raise OSError("gone")
        seen.append(path)
    monkeypatch.setattr(coherence, "invalidate_path", flaky)
    invalidate = PageInvalidator()
    invalidate(["/bad", "/good"])
    invalidate(["/also-good"])
    assert seen == ["/good", "/also-good"]
    assert "could not invalidate the kernel's cache of /bad" in caplog.text


@pytest.mark.parametrize("order", ["close-then-hide", "hide-then-close"])
def test_a_file_open_twice_keeps_its_hidden_name_until_both_close(order):
    hidden = HiddenNames()
    hidden.opened(A)
    hidden.opened(A)
    if order == "close-then-hide":
        assert hidden.closed(A) == []
        assert hidden.hidden(A, "j/.fuse_hiddenY") is False
    else:
        assert hidden.hidden(A, "j/.fuse_hiddenY") is False
        assert hidden.closed(A) == []
    assert hidden.closed(A) == ["j/.fuse_hiddenY"]
