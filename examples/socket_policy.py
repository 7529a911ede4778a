#!/usr/bin/env python3
"""Per-socket IPsec policy for an application (KAME ipsec_set_policy(3) syntax).

    python3 examples/socket_policy.py HOST PORT "out ipsec esp/transport//require"
    python3 examples/socket_policy.py HOST PORT "out bypass"      # needs root

A socket policy overrides the host's SPD for that one socket (ipsec(4) "per-socket
policy"): an application can demand ESP for its own traffic, or (as root) send in
clear text past a blocking default, as ipsecd's IKE sockets do.  This sends one UDP
datagram to HOST:PORT through a socket carrying the given policy and says what the
kernel did with it.
"""

from __future__ import annotations

import socket
import sys

from ipsecd.xfrm import PolicySyntaxError, XfrmError, set_socket_policy


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    host, port, policy = argv[0], int(argv[1]), argv[2]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            set_socket_policy(sock, policy)  # e.g. "out ipsec esp/transport//require"
        except (PolicySyntaxError, XfrmError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        try:
            sock.sendto(b"hello through a per-socket policy\n", (host, port))
        except OSError as exc:
            print(f"the kernel refused the datagram: {exc.strerror} ({policy!r})")
            return 1
    print(f"sent to {host}:{port} under {policy!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
