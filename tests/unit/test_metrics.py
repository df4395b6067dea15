"""``metrics.FuseRequests``: the FUSE request counts and latencies, counted per thread without a
lock and summed when scraped, in prometheus_client's exposition format."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from wsfs.core.metrics import FuseRequests


def scraped(requests: FuseRequests) -> dict[tuple[str, tuple], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(requests)
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_requests_of_many_threads_are_summed_with_their_latency_buckets():
    requests = FuseRequests()

    def serve():
        for _ in range(1000):
            requests.add("getattr", 0.00005)  # below the first bound (100 µs)
        requests.add("create", 0.003)          # in the 5 ms bucket
    threads = [threading.Thread(target=serve) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    requests.add("getattr", 7.0)               # past every bound: only in +Inf
    samples = scraped(requests)
    assert samples[("wsfs_fuse_requests_total", (("op", "getattr"),))] == 4001
    assert samples[("wsfs_fuse_requests_total", (("op", "create"),))] == 4
    bucket = "wsfs_fuse_request_seconds_bucket"
    assert samples[(bucket, (("le", "0.0001"), ("op", "getattr")))] == 4000
    assert samples[(bucket, (("le", "5.0"), ("op", "getattr")))] == 4000
    assert samples[(bucket, (("le", "+Inf"), ("op", "getattr")))] == 4001
    assert samples[(bucket, (("le", "0.0025"), ("op", "create")))] == 0
    assert samples[(bucket, (("le", "0.005"), ("op", "create")))] == 4
    assert samples[("wsfs_fuse_request_seconds_count", (("op", "getattr"),))] == 4001
    assert abs(samples[("wsfs_fuse_request_seconds_sum", (("op", "getattr"),))] - (4000 * 0.00005 + 7.0)) < 1e-9
