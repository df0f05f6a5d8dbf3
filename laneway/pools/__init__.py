"""Bounded pools with a fair-share queue in front of every backend (or lane). Filled in by the
pools issue; until then the router calls adapters directly."""
