"""The admin API (JSON): the lane inventory, backends and their refreshes, the model-list cache.

Every endpoint needs an admin key (``admin: true`` under ``auth.keys``; any key with open access).

    GET    /admin/lanes                 ?FIELD=VALUE... (any lane field: backend, model, tier, health...)
    GET    /admin/backends              each backend's last refresh, error, cooldown
    POST   /admin/refresh               ?backend=NAME (default: all)  &cache=false (skip the model-list cache)
    GET    /admin/model-cache           cached model lists
    DELETE /admin/model-cache           clear all
    DELETE /admin/model-cache/{backend} invalidate one backend
    DELETE /admin/cooldowns/{backend}   lift a backend's auth cooldown (the key was fixed)
    GET    /admin/signals               ?backend=NAME: quota, latency and status per backend
    GET    /admin/pools                 slots, active, queued (per caller), wait p50/p95 per pool
    GET    /admin/failovers             ?limit=N&replica=ID: recent failover records, newest first
    GET    /admin/breakers              lanes whose breaker is not plainly closed (cluster mode:
                                        which replica opened it, which holds its half-open trial)
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from laneway.errors import InvalidRequest, ModelNotFound
from laneway.failovers import FailoverRecord
from laneway.gateway import Gateway
from laneway.inventory.lanes import Lane
from laneway.inventory.reconcile import Reconciler
from laneway.pools.shared import SharedPool
from laneway.storage.errors import StorageError

LANE_FIELDS = frozenset(Lane("local", "f", "b", "chat", "m").as_dict())


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


class NotFound(ModelNotFound):
    code = "not_found"


class AdminRoutes:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def routes(self) -> list[Route]:
        return [
            Route("/admin/lanes", self.lanes, methods=["GET"]),
            Route("/admin/backends", self.backends, methods=["GET"]),
            Route("/admin/refresh", self.refresh, methods=["POST"]),
            Route("/admin/model-cache", self.cache, methods=["GET"]),
            Route("/admin/model-cache", self.clear_cache, methods=["DELETE"]),
            Route("/admin/model-cache/{backend}", self.invalidate_cache, methods=["DELETE"]),
            Route("/admin/cooldowns/{backend}", self.lift_cooldown, methods=["DELETE"]),
            Route("/admin/signals", self.signals, methods=["GET"]),
            Route("/admin/pools", self.pools, methods=["GET"]),
            Route("/admin/failovers", self.failovers, methods=["GET"]),
            Route("/admin/breakers", self.breakers, methods=["GET"]),
            Route("/admin/replicas", self.replicas, methods=["GET"]),
        ]

    def _admin(self, request: Request) -> Reconciler:
        gw = self.gateway
        gw.keys.require_admin(request.headers.get("authorization"), request.headers.get("x-api-key"))
        return gw.reconciler

    def _json(self, body: dict[str, Any]) -> Response:
        """Every answer carries the server's clock (``now``), so a client shows ages and expiries
        right even when its own clock differs."""
        return json_response({"now": self.gateway.clock.now(), **body})

    def _backend(self, reconciler: Reconciler, name: str) -> str:
        if name not in reconciler.refreshers:
            known = ", ".join(sorted(reconciler.refreshers)) or "none"
            raise NotFound(f"No backend named '{name}' (declared: {known})", param="backend")
        return name

    async def lanes(self, request: Request) -> Response:
        self._admin(request)
        filters = dict(request.query_params)
        unknown = sorted(set(filters) - LANE_FIELDS)
        if unknown:
            raise InvalidRequest(
                f"Unknown lane field '{unknown[0]}'; filter by any of: {', '.join(sorted(LANE_FIELDS))}",
                param=unknown[0],
            )
        lanes = sorted(self.gateway.inventory.query(filters), key=lambda ln: (ln.backend, ln.model, ln.type))
        return self._json({"lanes": [ln.as_dict() for ln in lanes], "count": len(lanes)})

    async def backends(self, request: Request) -> Response:
        reconciler = self._admin(request)
        return self._json({"backends": [st.as_dict() for st in reconciler.statuses()]})

    async def refresh(self, request: Request) -> Response:
        reconciler = self._admin(request)
        name = request.query_params.get("backend")
        cache = request.query_params.get("cache", "true").lower()
        if cache not in ("true", "false"):
            raise InvalidRequest("cache must be true or false", param="cache")
        await reconciler.sync_declared()  # a backend declared a moment ago is refreshable at once
        names = [self._backend(reconciler, name)] if name else None
        statuses = await reconciler.cycle(names, use_cache=cache == "true")
        return self._json({"backends": [st.as_dict() for st in statuses]})

    async def cache(self, request: Request) -> Response:
        reconciler = self._admin(request)
        entries = await reconciler.ctx.cache.entries()
        return self._json(
            {
                "ttl": reconciler.ctx.cache.ttl,
                "entries": [
                    {
                        "backend": e.backend,
                        "credential": e.fingerprint,
                        "models": e.models,
                        "cached_at": e.cached_at,
                    }
                    for e in sorted(entries, key=lambda e: e.backend)
                ],
            }
        )

    async def clear_cache(self, request: Request) -> Response:
        reconciler = self._admin(request)
        return self._json({"invalidated": await reconciler.ctx.cache.clear()})

    async def invalidate_cache(self, request: Request) -> Response:
        reconciler = self._admin(request)
        backend = request.path_params["backend"]
        return self._json({"invalidated": await reconciler.ctx.cache.invalidate(backend)})

    async def lift_cooldown(self, request: Request) -> Response:
        reconciler = self._admin(request)
        name = self._backend(reconciler, request.path_params["backend"])
        lifted = await self.gateway.lift_cooldown(name)  # here, in the store, and on every replica
        return self._json({"lifted": lifted, "backend": reconciler.refreshers[name].status.as_dict()})

    async def signals(self, request: Request) -> Response:
        self._admin(request)
        signals = self.gateway.signals
        wanted = request.query_params.get("backend")
        shown = [s for s in signals.snapshot() if wanted is None or s["backend"] == wanted]
        return self._json({"ttl": signals.settings.ttl, "signals": shown})

    async def pools(self, request: Request) -> Response:
        """Every pool's statistics; a pool counted across the cluster also says which replica
        holds and queues what (``replicas``), read now. ``served``, ``rejected`` and the waits are
        this replica's."""
        self._admin(request)
        if self.gateway.slots is not None:
            self.gateway.pool_every_lane()  # the cluster's pools, whether this replica used them yet
        shown = []
        for pool in sorted(self.gateway.pools.pools(), key=lambda p: p.name):
            entry = pool.statistics().as_dict()
            if isinstance(pool, SharedPool):
                entry["replicas"] = await pool.holders()
            shown.append(entry)
        return self._json({"replica": self.gateway.replicas.id, "pools": shown})

    async def replicas(self, request: Request) -> Response:
        """The live replicas (their records in the runtime store: every replica sharing this one's
        Redis; in the embedded default, this one), and which one answered."""
        self._admin(request)
        replicas = self.gateway.replicas
        live = await replicas.live()
        return self._json({"replica": replicas.id, "replicas": [r.as_dict() for r in live]})

    async def failovers(self, request: Request) -> Response:
        """Every replica's records, from the database (this replica's newest are written first,
        so they are never missing); when the database cannot be read, this replica's own from
        memory, and the answer says so (``source``, ``degraded``). ``kept``: how many records
        the answer draws from; ``total``: how many this replica made since it started."""
        self._admin(request)
        raw = request.query_params.get("limit", "100")
        if not raw.isdigit() or not 1 <= int(raw) <= 10_000:
            raise InvalidRequest("limit must be a whole number from 1 to 10000", param="limit")
        replica = request.query_params.get("replica") or None
        gw = self.gateway
        degraded = None
        try:
            await gw.failover_writer.flush()  # a failed write leaves its batch for the next try
            records, kept = await gw.failover_store.recent(int(raw), replica)
            source = "database"
        except StorageError as exc:
            (records, kept), source = self._remembered(int(raw), replica), "memory"
            degraded = f"the database could not be read, so these are this replica's only: {exc.message}"
        return self._json(
            {
                "failovers": [r.as_dict() for r in records],
                "kept": kept,
                "total": gw.failovers.total,
                "source": source,
                "replica": gw.replicas.id,
                "degraded": degraded,
            }
        )

    def _remembered(self, limit: int, replica: str | None) -> tuple[list[FailoverRecord], int]:
        """This replica's newest records, from memory (every one of them is this replica's)."""
        log = self.gateway.failovers
        if replica is not None and replica != log.replica:
            return [], 0
        return log.recent(limit), len(log)

    async def breakers(self, request: Request) -> Response:
        self._admin(request)
        return self._json({"breakers": self.gateway.breakers.snapshot()})
