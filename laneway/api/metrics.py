"""``GET /metrics``: the gateway's state in the Prometheus text format, read at scrape time.

A ``Collector`` reads what the gateway already keeps (the signals' quota and latency windows, the
inventory, the reconciler's refresh statuses) when Prometheus asks, so a scrape costs a few dict
walks and one sort per latency window. The only things counted on the request path are the RED
metrics (``RequestMetrics``, fed once per request by ``api.access``): a handful of dict and list
updates, no lock (one event loop), turned into metric families at scrape time. The registry
belongs to the app that serves it (never prometheus_client's global one): two gateways in one
process, as in the tests, keep apart.

The endpoint is open unless ``auth.metrics_key`` (or ``_env``, ``_hash``) is given; then it needs
``Authorization: Bearer`` with that key or an admin key (401 without a key or with an unknown one,
403 with a client key). It shows backend, lane and publisher names, quotas, latencies, request
counts and refresh outcomes, never a key, prompt, reply, caller or publisher session id (a
session id is the publisher's sticky identity: who knows it may register as that publisher).

RED metrics, by request: ``laneway_requests_total{route, lane, status}``,
``laneway_request_duration_seconds{route, lane}`` and, for streams,
``laneway_request_ttft_seconds{route, lane}`` (histograms), ``laneway_tokens_total{direction, lane}``
(``input``/``output``, as the upstream reported them) and ``laneway_errors_total{type}`` (laneway's
error code). Their cardinality is bounded by what the operator declares, never by what clients
send: ``route`` is the HTTP route template (``/v1/chat/completions``, ``""`` for a path no route
matches), not the model asked for; ``lane`` is the lane that served the request (or was tried
last; ``""`` when none was), so at most the lanes the gateway ever had; ``status`` an HTTP status;
``type`` one of laneway's error codes. Callers and model names are not labels: a trusted key may
name its sub-callers, and the model asked for is whatever the client typed.

The signal and inventory gauges are labelled by ``backend`` and ``family``; the pool metrics by
``pool`` (a backend's name, or a lane id for a backend with ``pool: lane``); the breaker gauges by
``lane`` (its id); the database writers' by ``kind`` (``api.record_metrics``). Times are in
seconds, ``..._seconds`` durations count down on the gateway's injected clock, and a value that
was never reported (a counter the provider does not send, a window without samples) is absent
rather than zero. A pool appears once a request first went through it, and a breaker only while
it is not plainly closed (it holds recent failures, or is open or half-open).

The pools' served, rejected, timed-out and cancelled counts are counters (``..._total``): they
start at 0 with the pool, so they start over when a pool is created again (its backend switched
``pool:`` mode, or was removed and declared again), which ``rate()`` treats as any counter reset.
"""

from __future__ import annotations

import hmac
import math
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from starlette.requests import Request
from starlette.responses import Response

from laneway.api.edge import EdgeStats
from laneway.api.record_metrics import writer_metrics
from laneway.auth.keys import secret_digest
from laneway.errors import AuthenticationFailed, PermissionDenied
from laneway.gateway import Gateway
from laneway.inventory.lanes import Health, Lane
from laneway.inventory.refresher import BackendStatus
from laneway.pools import PoolStatistics
from laneway.routing.breaker import CLOSED, HALF_OPEN, OPEN
from laneway.routing.record import RequestRecord
from laneway.signals.state import Status
from laneway.storage import hash_key

# The classic text format, which ``generate_latest`` writes. Spelled out because from
# prometheus_client 0.22 on ``CONTENT_TYPE_LATEST`` names version 1.0.0.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

QUANTILES = (("0.5", "p50"), ("0.95", "p95"))
QUOTA_KINDS = ("requests", "tokens")
BACKEND = ("backend", "family")
BREAKER_STATES = (CLOSED, OPEN, HALF_OPEN)
# Seconds. A request may queue and then generate for minutes; a first token comes sooner.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The ``/metrics`` endpoint with its own registry, and the RED counts it exposes."""

    def __init__(self, gateway: Gateway, edge: EdgeStats | None = None) -> None:
        self.keys = gateway.keys
        self.requests = RequestMetrics()
        self.registry = CollectorRegistry(auto_describe=False)  # no collect() before the gateway starts
        self.registry.register(GatewayCollector(gateway))
        self.registry.register(self.requests)
        if edge is not None:
            self.registry.register(EdgeCollector(edge))
        auth = gateway.settings.auth
        self.key_digest: str | None = None
        if auth.metrics_key or auth.metrics_key_env or auth.metrics_key_hash:
            self.key_digest = secret_digest(
                auth.metrics_key,
                auth.metrics_key_env,
                auth.metrics_key_hash,
                where="auth.metrics_key_env",
                source=gateway.settings.source,
            )

    async def endpoint(self, request: Request) -> Response:
        if self.key_digest is not None:
            self._authorize(request.headers.get("authorization"), request.headers.get("x-api-key"))
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE)

    def _authorize(self, authorization: str | None, api_key: str | None) -> None:
        """The metrics key, or else an admin key (an operator reading the numbers by hand)."""
        assert self.key_digest is not None
        scheme, _, token = (authorization or "").partition(" ")
        secret = token.strip() if scheme.lower() == "bearer" else ""
        if secret and hmac.compare_digest(hash_key(secret), self.key_digest):
            return
        if not secret and not api_key:
            raise AuthenticationFailed(
                "GET /metrics needs the metrics key (auth.metrics_key) or an admin key: "
                "send 'Authorization: Bearer <key>'."
            )
        try:
            self.keys.require_admin(authorization, api_key)
        except PermissionDenied:
            raise PermissionDenied(
                "This key may not read /metrics; use the metrics key (auth.metrics_key) or an admin key."
            ) from None


class Histogram:
    """One histogram series: counts per bucket (not cumulative; the last is +Inf) and the sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # the first bucket whose bound >= value
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == math.inf else repr(bound), running))
        return out


class RequestMetrics(Collector):
    """The RED metrics: counted once per request (``observe``, from the access middleware) in
    plain dicts, read into metric families at scrape time. Labels are bounded (module docstring)."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.durations: dict[tuple[str, str], Histogram] = {}
        self.ttfts: dict[tuple[str, str], Histogram] = {}
        self.tokens: Counter[tuple[str, str]] = Counter()
        self.errors: Counter[str] = Counter()

    def observe(self, record: RequestRecord, route: str) -> None:
        """Count one request that ended; ``route`` is its route template."""
        lane = record.lane or ""
        self.requests[route, lane, record.status or 0] += 1
        key = (route, lane)
        if record.duration is not None:
            histogram = self.durations.get(key)
            if histogram is None:
                histogram = self.durations[key] = Histogram(DURATION_BUCKETS)
            histogram.observe(record.duration)
        if record.streamed and record.ttft is not None:
            histogram = self.ttfts.get(key)
            if histogram is None:
                histogram = self.ttfts[key] = Histogram(TTFT_BUCKETS)
            histogram.observe(record.ttft)
        if record.prompt_tokens:
            self.tokens["input", lane] += record.prompt_tokens
        if record.completion_tokens:
            self.tokens["output", lane] += record.completion_tokens
        if record.error is not None:
            self.errors[record.error] += 1

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "laneway_requests_total",
            "Requests answered, by route template, serving (or last tried) lane and HTTP status",
            labels=["route", "lane", "status"],
        )
        for (route, lane, status), count in sorted(self.requests.items()):
            requests.add_metric([route, lane, str(status)], count)
        duration = HistogramMetricFamily(
            "laneway_request_duration_seconds",
            "From the request's arrival to the end of its response",
            labels=["route", "lane"],
        )
        for (route, lane), histogram in sorted(self.durations.items()):
            duration.add_metric([route, lane], histogram.buckets(), histogram.total)
        ttft = HistogramMetricFamily(
            "laneway_request_ttft_seconds",
            "Streams: from the request's arrival to the first body byte sent to the client",
            labels=["route", "lane"],
        )
        for (route, lane), histogram in sorted(self.ttfts.items()):
            ttft.add_metric([route, lane], histogram.buckets(), histogram.total)
        tokens = CounterMetricFamily(
            "laneway_tokens_total",
            "Tokens the upstreams reported, by direction (input: the prompt; output: the completion)",
            labels=["direction", "lane"],
        )
        for (direction, lane), count in sorted(self.tokens.items()):
            tokens.add_metric([direction, lane], count)
        errors = CounterMetricFamily(
            "laneway_errors_total", "Requests that failed, by laneway's error code", labels=["type"]
        )
        for code, count in sorted(self.errors.items()):
            errors.add_metric([code], count)
        yield from (requests, duration, ttft, tokens, errors)


def _gauge(name: str, documentation: str, *labels: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=[*BACKEND, *labels])


class EdgeCollector(Collector):
    """What the HTTP edge (``laneway.api.edge``) cut before a request reached the app."""

    def __init__(self, stats: EdgeStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        cut = CounterMetricFamily(
            "laneway_http_connections_cut_total",
            "Connections the HTTP edge answered and closed, by reason (header_too_large, "
            "too_many_headers, header_timeout, body_timeout, too_many_connections, idle_connection)",
            labels=["reason"],
        )
        for reason, count in sorted(self.stats.cut.items()):
            cut.add_metric([reason], count)
        yield cut


class GatewayCollector(Collector):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def collect(self) -> Iterator[Metric]:
        gw = self.gateway
        now = gw.clock.now()
        statuses = gw.reconciler.statuses()
        snapshot = gw.signals.snapshot()
        # A declared backend nothing was observed about yet is "unknown", not missing.
        yield from signal_metrics(snapshot, {st.name: st.family for st in statuses}, now)
        yield from inventory_metrics(statuses, gw.inventory.lanes(), now)
        yield from pool_metrics(gw.pools.statistics())
        yield from breaker_metrics(gw.breakers.snapshot())
        yield from failover_metrics(len(gw.failovers))
        yield from writer_metrics(
            {"usage": gw.usage.statistics(), "failovers": gw.failover_writer.statistics()}
        )
        yield from publisher_metrics(gw.fleet.snapshot(), gw.fleet.pending())


def publisher_metrics(sessions: list[dict[str, Any]], pending: int) -> list[Metric]:
    """Publishers (``Fleet.snapshot()``): control stream, heartbeat age, tasks; and the tasks
    parked until their publisher comes back. One series per publisher name, never per session: a
    session id is the publisher's sticky identity (whoever has it may register as that publisher),
    so it is not shown here. A name's sessions (a dead one not yet swept beside its successor) are
    summed up: connected if any is, the freshest heartbeat, every task in flight."""
    labels = ["publisher"]
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
    by_name: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in sessions:
        by_name[str(s["name"])].append(s)
    for name, group in sorted(by_name.items()):
        control.add_metric([name], 1.0 if any(s["control"] for s in group) else 0.0)
        age.add_metric([name], min(float(s["heartbeat_age"]) for s in group))
        tasks.add_metric([name], float(sum(s["tasks_in_flight"] for s in group)))
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
        "Failover records kept in memory (what GET /admin/failovers answers when the database "
        "cannot be read); at most routing.failover_records",
    )
    records.add_metric([], kept)
    return [records]


def _number(value: object) -> float:
    if not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)
