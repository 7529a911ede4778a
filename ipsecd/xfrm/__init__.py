"""Linux XFRM netlink on pyroute2's netlink core: policies, states, defaults, events."""
