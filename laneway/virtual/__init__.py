"""Virtual lanes: models that publishers (``laneway publish``) register from their own machines.

The gateway never connects to a publisher; the publisher dials out (docs/publishers.md), in the
messages of ``laneway.publishing.protocol``. ``registry`` keeps the sessions and their lanes (the
lifecycle state machine, on the data of ``records``), ``relay`` the control streams and the tasks
on them, ``dispatch`` turns calls into tasks, ``sessions`` serves the publisher endpoints, and
``fleet`` composes them for the gateway and the API.

In a cluster the same code runs on every replica: ``shared`` says where the truth about sessions
lives (``mirror``: a store every replica shares, mirrored by each), ``peers`` how tasks and posts
reach the other replicas and ``inbox`` what they tell this one. The Redis side of both is
``laneway.cluster.fleet``; nothing here imports it.
"""

from laneway.virtual.fleet import Fleet

__all__ = ["Fleet"]
