"""``laneway publish``: the publisher's side of the virtual-lane control channel."""
