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

The signal and inventory gauges are labelled by ``backend`` and ``family``; the pool metrics by
``pool`` (a backend's name, or a lane id for a backend with ``pool: lane``); the breaker gauges by
``lane`` (its id). Times are in seconds, ``..._seconds`` durations count down on the gateway's
injected clock, and a value that was never reported (a counter the provider does not send, a
window without samples) is absent rather than zero. A pool appears once a request first went
through it, and a breaker only while it is not plainly closed (it holds recent failures, or is
open or half-open).

The pools' served, rejected, timed-out and cancelled counts are counters (``..._total``): they
start at 0 with the pool, so they start over when a pool is created again (its backend switched
``pool:`` mode, or was removed and declared again), which ``rate()`` treats as any counter reset.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from starlette.requests import Request
from starlette.responses import Response

from laneway.gateway import Gateway
from laneway.inventory.lanes import Health, Lane
from laneway.inventory.refresher import BackendStatus
from laneway.pools import PoolStatistics
from laneway.routing.breaker import CLOSED, HALF_OPEN, OPEN
from laneway.signals.state import Status

# The classic text format, which ``generate_latest`` writes. Spelled out because from
# prometheus_client 0.22 on ``CONTENT_TYPE_LATEST`` names version 1.0.0.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

QUANTILES = (("0.5", "p50"), ("0.95", "p95"))
QUOTA_KINDS = ("requests", "tokens")
BACKEND = ("backend", "family")
BREAKER_STATES = (CLOSED, OPEN, HALF_OPEN)


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
        yield from pool_metrics(gw.pools.statistics())
        yield from breaker_metrics(gw.breakers.snapshot())
        yield from failover_metrics(len(gw.failovers))
        if gw.fleet is not None:
            yield from publisher_metrics(gw.fleet.snapshot(), gw.fleet.pending())


def publisher_metrics(sessions: list[dict[str, Any]], pending: int) -> list[Metric]:
    """Publisher sessions (``Fleet.snapshot()``): control stream, heartbeat age, tasks; and the
    tasks parked until their publisher comes back. One series per session, not per caller."""
    labels = ["publisher", "session"]
    control = GaugeMetricFamily(
        "laneway_publisher_connected", "1 while the publisher's control stream is open", labels=labels
    )
    age = GaugeMetricFamily(
        "laneway_publisher_heartbeat_age_seconds",
        "Seconds since the publisher's last heartbeat",
        labels=labels,
    )
    tasks = GaugeMetricFamily(
        "laneway_publisher_tasks_in_flight", "Tasks sent and not yet answered", labels=labels
    )
    for s in sessions:
        ids = [str(s["name"]), str(s["session_id"])]
        control.add_metric(ids, 1.0 if s["control"] else 0.0)
        age.add_metric(ids, float(s["heartbeat_age"]))
        tasks.add_metric(ids, float(s["tasks_in_flight"]))
    parked = GaugeMetricFamily(
        "laneway_publisher_pending_tasks", "Tasks waiting for their publisher to come back"
    )
    parked.add_metric([], float(pending))
    return [control, age, tasks, parked]


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


def pool_metrics(pools: Iterable[PoolStatistics]) -> list[Metric]:
    """Slots, who holds and who waits for them, and what became of the requests, per pool.

    Cardinality: ``laneway_pool_queued_by_caller`` has a series only for the callers queued at
    the moment of the scrape, so it is bounded by the callers waiting at once, not by every caller
    ever seen; a caller whose requests all got a slot simply has no series. That bound matters: a
    caller is an API key's name, but a trusted key may name sub-callers (``x-laneway-caller``), so
    the values are partly the clients' choice. Summed over ``caller`` it is ``laneway_pool_queued``."""
    pool = ["pool"]
    slots = GaugeMetricFamily("laneway_pool_slots", "Calls the pool lets run at once", labels=pool)
    active = GaugeMetricFamily(
        "laneway_pool_active", "Slots held (by running calls, or granted to waiters waking up)", labels=pool
    )
    queued = GaugeMetricFamily("laneway_pool_queued", "Requests waiting for a slot", labels=pool)
    by_caller = GaugeMetricFamily(
        "laneway_pool_queued_by_caller",
        "Requests waiting for a slot, per caller; only callers queued now",
        labels=[*pool, "caller"],
    )
    wait = GaugeMetricFamily(
        "laneway_pool_wait_seconds",
        "Time served requests waited for a slot, over the recent window",
        labels=[*pool, "quantile"],
    )
    served = CounterMetricFamily("laneway_pool_served_total", "Requests that got a slot", labels=pool)
    rejected = CounterMetricFamily(
        "laneway_pool_rejected_total", "Requests refused at once because the queue was full", labels=pool
    )
    timed_out = CounterMetricFamily(
        "laneway_pool_timed_out_total", "Requests that waited queue_timeout without a slot", labels=pool
    )
    cancelled = CounterMetricFamily(
        "laneway_pool_cancelled_total", "Requests whose caller left while they were queued", labels=pool
    )
    for st in pools:
        labels = [st.name]
        slots.add_metric(labels, st.slots)
        active.add_metric(labels, st.active)
        queued.add_metric(labels, st.queued)
        for caller, count in sorted(st.queued_by_caller.items()):
            by_caller.add_metric([st.name, caller], count)
        _quantiles(wait, labels, {"p50": st.wait_p50, "p95": st.wait_p95})
        served.add_metric(labels, st.served)
        rejected.add_metric(labels, st.rejected)
        timed_out.add_metric(labels, st.timed_out)
        cancelled.add_metric(labels, st.cancelled)
    return [slots, active, queued, by_caller, wait, served, rejected, timed_out, cancelled]


def breaker_metrics(snapshot: Mapping[str, Mapping[str, object]]) -> list[Metric]:
    """The lanes whose breaker is not plainly closed, from ``Breakers.snapshot()``: its state one
    hot, how long it stays open, and the failures it holds (a closed breaker with failures is on
    its way to opening). A lane whose breaker closed again has no series."""
    lane = ["lane"]
    state = GaugeMetricFamily(
        "laneway_breaker_state", "1 for the lane's breaker state, 0 for the others", labels=[*lane, "state"]
    )
    open_for = GaugeMetricFamily(
        "laneway_breaker_open_seconds",
        "Seconds until an open breaker lets a trial call through (0 unless open)",
        labels=lane,
    )
    failures = GaugeMetricFamily(
        "laneway_breaker_recent_failures",
        "Failures counted toward opening a closed breaker (/admin/breakers' recent_failures)",
        labels=lane,
    )
    for lane_id, breaker in snapshot.items():
        current = breaker["state"]
        for value in BREAKER_STATES:
            state.add_metric([lane_id, value], 1.0 if value == current else 0.0)
        open_for.add_metric([lane_id], _number(breaker["open_for"]))
        failures.add_metric([lane_id], _number(breaker["recent_failures"]))
    return [state, open_for, failures]


def failover_metrics(kept: int) -> list[Metric]:
    records = GaugeMetricFamily(
        "laneway_failover_records",
        "Failover records kept in memory (GET /admin/failovers); at most routing.failover_records",
    )
    records.add_metric([], kept)
    return [records]


def _number(value: object) -> float:
    if not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)
