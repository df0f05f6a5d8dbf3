"""Routing: from a requested name to the lane that serves it.

``resolve`` turns a name (route, lane id, model, ``backend/model``) into candidate lanes; ``rank``
orders them; ``dispatch.Router`` tries them in order, one ``attempt`` each (acquire a slot, call,
learn from the outcome), failing over as each failure's verdict (``laneway.errors.classify``)
allows; ``breaker`` keeps failing lanes out of rotation; ``failover`` keeps the record of what
the attempts did; ``backends`` is what the router asks of the declared and published backends.
"""
