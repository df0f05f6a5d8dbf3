"""Runtime signals per backend and lane, learnt from the traffic itself: quota from rate-limit
headers (``headers``), latency windows (``latency``), status (``state``), and the registry that
observes them on the request path and persists them off it (``store``). The router feeds it; the
admin API, ``laneway signals`` and /metrics read it; ranking (the pools and routing issue) will."""
