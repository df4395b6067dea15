"""Mode and seed of the stress suites (``tests/test_stress_*.py``).

``WSFS_STRESS=full`` (``make stress``) runs them in full; without it they run
short, for CI.  Every random choice (hypothesis, the racing threads) derives
from one seed: ``WSFS_SEED=N`` reproduces a run, and the seed is printed in
the session header line of each suite and in every failure.
"""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import HealthCheck, seed, settings

FULL = os.environ.get("WSFS_STRESS", "").lower() == "full"
SEED = int(os.environ["WSFS_SEED"]) if os.environ.get("WSFS_SEED") else random.SystemRandom().randrange(1 << 32)


def pick(short, full):
    """The short (CI) or the full (``make stress``) figure."""
    return full if FULL else short


def stress_settings(short: int, full: int) -> settings:
    """hypothesis settings for a stress test: its example count, no deadline, no replay database.

    A mount is shared by all the examples of a test on purpose (that is the
    point: hostile input must not wear it down), hence the fixture check off.
    """
    return settings(max_examples=pick(short, full), deadline=None, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large, HealthCheck.filter_too_much])


def stress(short: int, full: int):
    """Decorator: ``stress_settings`` plus hypothesis seeded from ``SEED``."""
    def decorate(test):
        return seed(SEED)(stress_settings(short, full)(test))
    return decorate


def rng(label: str) -> random.Random:
    """A generator seeded from ``SEED`` and a label, so each thread's choices are reproducible."""
    return random.Random(f"{SEED}:{label}")


@pytest.fixture(scope="module", autouse=True)
def announce_seed(request):
    """One line per suite on the terminal: its mode and ``WSFS_SEED``, for reproducing it."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    line = f"{request.module.__name__}: WSFS_STRESS={'full' if FULL else 'short'} WSFS_SEED={SEED}"
    if reporter is not None:
        reporter.write_line(line)
    yield


@pytest.fixture(autouse=True)
def seed_in_report():
    """The seed in every test's captured output, so a failure report carries it."""
    print(f"WSFS_STRESS={'full' if FULL else 'short'} WSFS_SEED={SEED}")
