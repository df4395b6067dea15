"""Prometheus metrics of the daemon: ``.wsfs/metrics`` (root's) and, optionally, an HTTP port.

Counters and histograms move where things happen (a FUSE request, a transition, a refused
write, a sweep, a failed publish); gauges are read from the store and the daemon when scraped
(``StateCollector``).  The text is prometheus_client's own exposition format.

Metric names (README "Metrics"):

    wsfs_fuse_requests_total{op}                 FUSE requests by operation
    wsfs_fuse_request_seconds{op}                their latency (histogram)
    wsfs_fuse_errors_total{op,errno}             requests answered with an errno (EDQUOT, EROFS ...)
    wsfs_transitions_total{from_state,to_state}  job transitions
    wsfs_rejected_commands_total{via,errno}      refused .state and .wsfs/control writes
    wsfs_sweeps_total, wsfs_sweep_seconds        retention sweeps and their duration (histogram)
    wsfs_publish_failures_total{what}            failed publish targets and hooks
    wsfs_pressure_purges_total                   jobs purged early under disk pressure
    wsfs_jobs{state}                             jobs by state (records; archived and purged too)
    wsfs_job_bytes{state,template}, wsfs_job_files{state,template}   usage of jobs with a tree
    wsfs_user_bytes{uid}, wsfs_user_files{uid}, wsfs_user_jobs{uid}  per user, jobs with a tree
    wsfs_trash_entries, wsfs_hash_backlog, wsfs_publish_queue        work waiting

Threading: prometheus_client's metrics are thread-safe; ``collect`` runs on the thread that
reads ``.wsfs/metrics`` or on the HTTP server's thread.
"""

from __future__ import annotations

import bisect
import errno as errno_module
import threading

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

REGISTRY = CollectorRegistry(auto_describe=False)
_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)


class FuseRequests:
    """``wsfs_fuse_requests_total{op}`` and ``wsfs_fuse_request_seconds{op}``, counted without a
    lock: each thread adds to a table of its own, a scrape sums the tables.  (prometheus_client's
    Counter and Histogram take a lock per value: 2.3 µs of every request, 7 % of a stat.)

    Threading: ``add`` from any thread (its own table; ``_lock`` only at a thread's first
    request); ``collect`` from the thread that scrapes.  A scrape may see a request counted
    and not yet in its bucket: the +Inf bucket is the larger of the two.
    """

    def __init__(self):
        self._tables: list[dict[str, list]] = []
        self._local = threading.local()
        self._lock = threading.Lock()

    def add(self, op: str, seconds: float) -> None:
        try:
            table = self._local.table
        except AttributeError:
            table = self._local.table = {}
            with self._lock:
                self._tables.append(table)
        row = table.get(op)
        if row is None:
            row = table[op] = [0, 0.0] + [0] * len(_LATENCY_BUCKETS)  # count, sum, each bucket alone
        row[0] += 1
        row[1] += seconds
        bucket = bisect.bisect_left(_LATENCY_BUCKETS, seconds)
        if bucket < len(_LATENCY_BUCKETS):
            row[2 + bucket] += 1

    def collect(self):
        totals: dict[str, list] = {}
        with self._lock:
            tables = list(self._tables)
        for table in tables:
            for op, row in list(table.items()):
                total = totals.setdefault(op, [0] * len(row))
                for i, value in enumerate(row):
                    total[i] += value
        requests = CounterMetricFamily("wsfs_fuse_requests", "FUSE requests by operation", labels=["op"])
        latency = HistogramMetricFamily("wsfs_fuse_request_seconds", "FUSE request latency in the daemon, "
                                        "by operation", labels=["op"])
        for op, (count, seconds, *alone) in sorted(totals.items()):
            buckets, below = [], 0
            for bound, n in zip(_LATENCY_BUCKETS, alone, strict=True):
                below += n
                buckets.append((floatToGoString(bound), below))
            buckets.append(("+Inf", max(count, below)))
            requests.add_metric([op], max(count, below))
            latency.add_metric([op], buckets, seconds)
        yield requests
        yield latency


FUSE_REQUESTS = FuseRequests()
REGISTRY.register(FUSE_REQUESTS)
FUSE_ERRORS = Counter("wsfs_fuse_errors", "FUSE requests answered with an errno, by operation and errno",
                      ["op", "errno"], registry=REGISTRY)
TRANSITIONS = Counter("wsfs_transitions", "Job transitions", ["from_state", "to_state"], registry=REGISTRY)
REJECTED = Counter("wsfs_rejected_commands", "Refused .state and .wsfs/control writes", ["via", "errno"],
                   registry=REGISTRY)
SWEEPS = Histogram("wsfs_sweep_seconds", "Retention sweeps and their duration", registry=REGISTRY,
                   buckets=(0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 30.0))
PRESSURE_PURGES = Counter("wsfs_pressure_purges", "Jobs purged early under disk pressure", registry=REGISTRY)
PUBLISH_FAILURES = Counter("wsfs_publish_failures", "Failed publish targets and hooks", ["what"], registry=REGISTRY)


def errno_name(number: int | None) -> str:
    return errno_module.errorcode.get(number or 0, str(number))


class StateCollector:
    """Gauges read when scraped, from ``state()``: a dict the daemon builds (``Daemon.metrics_state``)."""

    def __init__(self, state):
        self._state = state

    def collect(self):
        state = self._state()
        jobs = GaugeMetricFamily("wsfs_jobs", "Jobs by state", labels=["state"])
        for name, count in sorted(state["jobs"].items()):
            jobs.add_metric([name], count)
        yield jobs
        for what, key in (("bytes", 0), ("files", 1)):
            family = GaugeMetricFamily(f"wsfs_job_{what}", f"{what.capitalize()} of jobs with a tree, by state and "
                                       "template", labels=["state", "template"])
            for (state_name, template), usage in sorted(state["by_template"].items()):
                family.add_metric([state_name, template], usage[key])
            yield family
        for what, key in (("bytes", 0), ("files", 1), ("jobs", 2)):
            family = GaugeMetricFamily(f"wsfs_user_{what}", f"{what.capitalize()} of each user's jobs with a tree",
                                       labels=["uid"])
            for uid, usage in sorted(state["by_user"].items()):
                family.add_metric([str(uid)], usage[key])
            yield family
        for name, text in (("trash_entries", "Entries of the trash not deleted yet"),
                           ("hash_backlog", "Files closed whose sha256 is still being computed"),
                           ("publish_queue", "Jobs whose publishing is pending")):
            yield GaugeMetricFamily(f"wsfs_{name}", text, value=state[name])


_collector: StateCollector | None = None


def serve_state(state) -> None:
    """Register the daemon's gauges (once per process)."""
    global _collector
    if _collector is not None:
        REGISTRY.unregister(_collector)
    _collector = StateCollector(state)
    REGISTRY.register(_collector)


def render() -> bytes:
    return generate_latest(REGISTRY)


def listen(address: str) -> None:
    """``metrics_listen = "HOST:PORT"``: the same text over HTTP (prometheus_client's server thread)."""
    host, _sep, port = address.rpartition(":")
    start_http_server(int(port), addr=host or "127.0.0.1", registry=REGISTRY)
