"""``laneway sim``: a simulated OpenAI / Ollama / Anthropic upstream for tests, benchmarks and demos.

    app = build_sim_app(SimOptions(family="ollama", latency=0.05))
    with ServerThread(app) as url: ...

It speaks the real wire formats (the official SDKs accept its answers), answers deterministically,
and makes trouble on request: latency, slow streams, failures, dropped connections, garbage,
auth errors and rate limits with the real header formats. ``GET /_sim/stats``,
``POST /_sim/options`` and ``POST /_sim/reset`` control a running sim.
"""

from laneway.sim.app import SimApp, SimStats, SimulatedDrop, build_sim_app
from laneway.sim.options import SimOptions, apply_patch, default_models
from laneway.sim.server import serve_sim

__all__ = [
    "SimApp",
    "SimOptions",
    "SimStats",
    "SimulatedDrop",
    "apply_patch",
    "build_sim_app",
    "default_models",
    "serve_sim",
]
