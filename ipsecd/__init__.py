"""ipsecd core library: the SPD language, the IKEv2 engine, the XFRM netlink layer.

Imports go one way: the services (``controller``, ``agent``) import this package;
nothing in here imports them.
"""

__version__ = "0.1.0"
