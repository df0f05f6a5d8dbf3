"""What the gateway and ``laneway publish`` share: the publisher protocol (``protocol``).

Both halves import it, the gateway's (``laneway.virtual``) and the publisher's
(``laneway.publisher``); it imports neither, so neither half reaches into the other.
"""
