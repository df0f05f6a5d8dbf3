"""The ``cluster`` section: how one replica takes part in a cluster of several (docs/cluster.md).

A cluster is several ``laneway serve`` processes on one PostgreSQL database
(``storage.database_url``) and one Redis (``storage.runtime_url: redis://...``). Every replica
runs the same code; these settings only name it and say how long what it holds stays its own.
"""

from __future__ import annotations

from pydantic import model_validator

from laneway.config.common import Seconds, Strict


class ClusterConfig(Strict):
    # This replica's name in the cluster's views; default: <hostname>-<pid>-<4 random hex digits>,
    # new at every start (a restarted replica is a new one: what the old one held has lapsed).
    replica_id: str | None = None
    # How operators and the other replicas reach it (http://10.0.0.7:8080); default: the server's
    # host and port as it listens.
    advertise: str | None = None
    # What a replica holds (its heartbeat, and later its leases) lapses this long after it was last
    # renewed: a replica killed without a word is out of the cluster within this time.
    lease_ttl: Seconds = 10.0
    heartbeat: Seconds = 2.0  # how often a replica renews what it holds; under lease_ttl / 2
    # Every key laneway keeps in Redis starts with this, so several deployments (or test runs) can
    # share one server.
    namespace: str = "laneway:"
    # A Redis call (connecting, or one reply) that takes longer has failed; after a few such in a
    # row the store stops trying for a moment (storage.redisstore.RedisBreaker).
    redis_timeout: Seconds = 1.0
    # The same, for the calls a client request waits on (a pool slot leased from the cluster's
    # count): shorter, so a Redis that hangs costs a request at most this much once, then the
    # breaker answers at once and the replica serves from what it knows.
    redis_request_timeout: Seconds = 0.25

    @model_validator(mode="after")
    def _renewed_in_time(self) -> ClusterConfig:
        if self.heartbeat * 2 > self.lease_ttl:
            raise ValueError(
                f"heartbeat ({self.heartbeat:g} s) must be at most half of lease_ttl "
                f"({self.lease_ttl:g} s), or a replica that is alive may lapse between two renewals"
            )
        if not self.namespace:
            raise ValueError("namespace must not be empty")
        return self
