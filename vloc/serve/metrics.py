"""The service's Prometheus metrics, in a registry of its own (no global state)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServiceMetrics:
    """Requests by status, latency by stage, queue depth, localized / failed counts by reason."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("vloc_requests", "HTTP requests answered", ["path", "status"], registry=r)
        self.request_seconds = Histogram("vloc_request_seconds", "time from request to response", ["path"],
                                         buckets=STAGE_BUCKETS, registry=r)
        self.stage_seconds = Histogram("vloc_stage_seconds", "time per localization stage (queue: waiting for "
                                       "the map's worker)", ["map", "stage"], buckets=STAGE_BUCKETS, registry=r)
        self.queue_depth = Gauge("vloc_queue_depth", "localizations waiting or running", ["map"], registry=r)
        self.localizations = Counter("vloc_localizations", "localization results", ["map", "status", "reason"],
                                     registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def reason_label(reason: str) -> str:
    """A bounded label for a failure reason: its words before the first figure or parenthesis."""
    head = reason.split(" (")[0].split(": ")[-1]
    words = []
    for word in head.split():
        if any(c.isdigit() for c in word):
            break
        words.append(word)
    return " ".join(words)[:60] or "unknown"
