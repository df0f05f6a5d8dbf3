"""Cluster mode: what replicas of one laneway share through Redis (docs/cluster.md)."""
