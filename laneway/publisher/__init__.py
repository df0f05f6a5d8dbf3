"""``laneway publish``: the publisher's side of the virtual-lane control channel.

A publisher runs next to a model server that the gateway cannot reach (a laptop, a box behind
NAT), dials out to the gateway and serves the calls it relays (docs/publishers.md):

- ``local``: the model server — its family, its models, the lanes they become, one call;
- ``client``: the protocol's HTTP calls to the gateway (the messages of
  ``laneway.publishing.protocol``);
- ``tasks``: running the tasks and wakes the gateway sends, posting their chunks (``chunks``) and
  results;
- ``state``: the state file that keeps the session id across restarts;
- ``runner``: ``Publisher``, the loops that tie them together.
"""
