"""Runtime signals per backend and lane: quota from rate-limit headers, latency windows, status.

Filled in by the signals issue; the router consumes it."""
