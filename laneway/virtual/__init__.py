"""Virtual lanes: models that publishers (``laneway publish``) register from their own machines.

The gateway never connects to a publisher; the publisher dials out (docs/publishers.md), in the
messages of ``laneway.publishing.protocol``. ``registry`` keeps the sessions and their lanes (the
lifecycle state machine), ``relay`` the control streams and the tasks on them, ``dispatch`` turns
calls into tasks, ``sessions`` serves the publisher endpoints, and ``fleet`` composes them for the
gateway and the API.
"""

from laneway.virtual.fleet import Fleet

__all__ = ["Fleet"]
