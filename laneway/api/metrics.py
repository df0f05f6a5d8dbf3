"""``GET /metrics``: the gateway's state in the Prometheus text format, read at scrape time.

Nothing is counted on the request path. A ``Collector`` reads what the gateway already keeps (the
signals' quota and latency windows, the inventory, the reconciler's refresh statuses) when
Prometheus asks, so a scrape costs a few dict walks and one sort per latency window. The registry
belongs to the app that serves it (never prometheus_client's global one): two gateways in one
process, as in the tests, keep apart.

The endpoint is open, like most exporters: a scraper needs no API key. It shows backend and lane
names, quotas, latencies and refresh outcomes, never a key, prompt or reply; keep it off networks
that should not see backend names (bind ``server.host`` to a private address, or filter ``/metrics``
at the reverse proxy).

Every gauge is labelled by ``backend`` and ``family``. Times are in seconds, ``..._seconds``
durations count down on the gateway's injected clock, and a value that was never reported (a
counter the provider does not send, a window without samples) is absent rather than zero.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from starlette.requests import Request
from starlette.responses import Response

from laneway.gateway import Gateway
from laneway.inventory.lanes import Health, Lane
from laneway.inventory.refresher import BackendStatus
from laneway.signals.state import Status

# The classic text format, which ``generate_latest`` writes. Spelled out because from
# prometheus_client 0.22 on ``CONTENT_TYPE_LATEST`` names version 1.0.0.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

QUANTILES = (("0.5", "p50"), ("0.95", "p95"))
QUOTA_KINDS = ("requests", "tokens")
BACKEND = ("backend", "family")


class Metrics:
    """The ``/metrics`` endpoint with its own registry."""

    def __init__(self, gateway: Gateway) -> None:
        self.registry = CollectorRegistry(auto_describe=False)  # no collect() before the gateway starts
        self.registry.register(GatewayCollector(gateway))

    async def endpoint(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE)


def _gauge(name: str, documentation: str, *labels: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=[*BACKEND, *labels])


class GatewayCollector(Collector):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def collect(self) -> Iterator[Metric]:
        gw = self.gateway
        now = gw.clock.now()
        statuses = gw.reconciler.statuses() if gw.reconciler else []
        snapshot = gw.signals.snapshot() if gw.signals else []
        # A declared backend nothing was observed about yet is "unknown", not missing.
        yield from signal_metrics(snapshot, {st.name: st.family for st in statuses}, now)
        yield from inventory_metrics(statuses, gw.inventory.lanes(), now)


def signal_metrics(snapshot: list[dict[str, Any]], declared: Mapping[str, str], now: float) -> list[Metric]:
    """Status, quota and latency from ``Signals.snapshot()`` (``BackendSignal.as_dict`` each)."""
    status = _gauge(
        "laneway_backend_status",
        "1 for the backend's current signal status, 0 for the others",
        "status",
    )
    remaining = _gauge("laneway_quota_remaining", "What the provider last said is left", "kind")
    limit = _gauge("laneway_quota_limit", "The provider's last reported limit per window", "kind")
    reset = _gauge("laneway_quota_reset_seconds", "Seconds until the provider resets the counter", "kind")
    latency = _gauge("laneway_latency_seconds", "Upstream call duration over the recent window", "quantile")
    ttft = _gauge("laneway_ttft_seconds", "Time to first byte of streams over the recent window", "quantile")
    lane_latency = _gauge(
        "laneway_lane_latency_seconds", "Upstream call duration per lane over its window", "lane", "quantile"
    )
    lane_ttft = _gauge(
        "laneway_lane_ttft_seconds", "Time to first byte per lane over its window", "lane", "quantile"
    )

    observed = {sig["backend"]: sig for sig in snapshot}
    for name in sorted(declared.keys() | observed.keys()):
        sig = observed.get(name)
        family = sig["family"] if sig else declared[name]
        current = sig["status"] if sig else Status.UNKNOWN
        for value in Status:
            status.add_metric([name, family, value], 1.0 if value == current else 0.0)
        if sig is None:
            continue
        for kind in QUOTA_KINDS:
            quota = sig[kind] or {}
            if quota.get("remaining") is not None:
                remaining.add_metric([name, family, kind], quota["remaining"])
            if quota.get("limit") is not None:
                limit.add_metric([name, family, kind], quota["limit"])
            if quota.get("reset_at") is not None:
                reset.add_metric([name, family, kind], max(0.0, quota["reset_at"] - now))
        _quantiles(latency, [name, family], sig["latency"])
        _quantiles(ttft, [name, family], sig["ttft"])
        for lane_id, windows in sig["lanes"].items():
            _quantiles(lane_latency, [name, family, lane_id], windows["latency"])
            _quantiles(lane_ttft, [name, family, lane_id], windows["ttft"])
    return [status, remaining, limit, reset, latency, ttft, lane_latency, lane_ttft]


def _quantiles(gauge: GaugeMetricFamily, labels: list[str], summary: Mapping[str, Any]) -> None:
    for quantile, key in QUANTILES:
        if summary.get(key) is not None:
            gauge.add_metric([*labels, quantile], summary[key])


def inventory_metrics(statuses: list[BackendStatus], inventory: Iterable[Lane], now: float) -> list[Metric]:
    """Lanes per backend and health, and what the last refresh of each backend found."""
    lanes = _gauge("laneway_lanes", "Lanes in the inventory, by health", "health")
    refreshed = _gauge(
        "laneway_backend_last_refresh_timestamp_seconds", "When the last successful refresh ended"
    )
    cooldown = _gauge(
        "laneway_backend_auth_cooldown_seconds",
        "Seconds until refreshes resume after the provider refused the credentials (0: none)",
    )
    error = _gauge("laneway_backend_refresh_error", "1 if the backend's last refresh failed, else 0")

    families = {st.name: st.family for st in statuses}
    counts: Counter[tuple[str, str]] = Counter()
    for lane in inventory:
        families.setdefault(lane.backend, lane.family)
        counts[lane.backend, lane.health or Health.HEALTHY] += 1
    # Every health for every backend, zeros included, so a backend whose lanes all went "open"
    # shows healthy=0 rather than nothing.
    for name in sorted(families):
        for health in Health:
            lanes.add_metric([name, families[name], health], counts[name, health])
    for st in statuses:
        labels = [st.name, st.family]
        if st.last_refresh is not None:
            refreshed.add_metric(labels, st.last_refresh)
        until = st.cooldown_until
        cooldown.add_metric(labels, max(0.0, until - now) if until is not None else 0.0)
        error.add_metric(labels, 1.0 if st.last_error else 0.0)
    return [lanes, refreshed, cooldown, error]
