"""Virtual lanes: models that publishers (``laneway publish``) register from their own machines.

The gateway never connects to a publisher; the publisher dials out (docs/publishers.md):
``tokens`` says who may publish what, ``registry`` keeps the sessions and their lanes (the
lifecycle state machine), ``relay`` carries tasks over the control streams and results back,
and ``fleet`` puts them together for the gateway and the API.
"""

from laneway.virtual.fleet import Fleet

__all__ = ["Fleet"]
