"""ipsec_set_policy(3) strings → socket policies, and their setsockopt bytes."""

from __future__ import annotations

import socket
import struct

import pytest

from ipsecd.xfrm.consts import Action, Dir, Mode, Proto
from ipsecd.xfrm.model import Level, Template, address
from ipsecd.xfrm.sockpolicy import (
    PolicySyntaxError,
    SocketPolicy,
    parse_ipsec_policy,
    socket_policy_bytes,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("in bypass", SocketPolicy(Dir.IN, Action.ALLOW)),
        ("out none", SocketPolicy(Dir.OUT, Action.ALLOW)),
        ("out discard", SocketPolicy(Dir.OUT, Action.BLOCK)),
        ("in entrust", SocketPolicy(Dir.IN, entrust=True)),
        (
            "out ipsec esp/transport//require",
            SocketPolicy(Dir.OUT, Action.ALLOW, (Template(Proto.ESP, Mode.TRANSPORT),)),
        ),
        (
            "out ipsec esp/tunnel/192.0.2.1-192.0.2.2/unique:7 ah/transport//use",
            SocketPolicy(
                Dir.OUT,
                Action.ALLOW,
                (
                    Template(
                        Proto.ESP,
                        Mode.TUNNEL,
                        address("192.0.2.1"),
                        address("192.0.2.2"),
                        reqid=7,
                        level=Level.UNIQUE,
                    ),
                    Template(Proto.AH, Mode.TRANSPORT, level=Level.USE),
                ),
            ),
        ),
        (
            "in ipsec ah/tunnel/fd00::1-fd00::2/default",
            SocketPolicy(
                Dir.IN,
                Action.ALLOW,
                (Template(Proto.AH, Mode.TUNNEL, address("fd00::1"), address("fd00::2")),),
            ),
        ),
    ],
)
def test_parse(text: str, expected: SocketPolicy) -> None:
    assert parse_ipsec_policy(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty policy"),
        ("fwd bypass", "direction must be"),
        ("out", "missing action"),
        ("out bypass esp/transport//require", "takes no requests"),
        ("out ipsec", "at least one"),
        ("out ipsec esp/transport/require", "protocol/mode/src-dst/level"),
        ("out ipsec gre/transport//require", "unknown protocol"),
        ("out ipsec esp/beet//require", "unknown mode"),
        ("out ipsec esp/tunnel//require", "needs src-dst"),
        ("out ipsec esp/tunnel/192.0.2.1/require", "must be src-dst"),
        ("out ipsec esp/tunnel/192.0.2.1-nothere/require", "bad endpoint"),
        ("out ipsec esp/transport//sometimes", "unknown level"),
        ("out ipsec esp/transport//unique", "no automatic reqid"),
        ("out ipsec esp/transport//unique:x", "needs a number"),
        ("out allow", "unknown action"),
    ],
)
def test_parse_errors_say_where(text: str, fragment: str) -> None:
    with pytest.raises(PolicySyntaxError, match="column") as info:
        parse_ipsec_policy(text)
    assert fragment in str(info.value)


def test_bytes_layout() -> None:
    pol = parse_ipsec_policy("out ipsec esp/transport//use")
    data = socket_policy_bytes(pol, socket.AF_INET6)
    assert len(data) == 168 + 64
    assert struct.unpack_from("=H", data, 40)[0] == socket.AF_INET6  # sel.family
    assert data[160:162] == bytes([Dir.OUT, Action.ALLOW])
    assert data[168 + 20] == Proto.ESP
    assert struct.unpack_from("=H", data, 168 + 24)[0] == socket.AF_INET6
    assert data[168 + 50] == 1  # optional = level use


def test_fwd_is_refused() -> None:
    with pytest.raises(ValueError, match="'in' or 'out'"):
        SocketPolicy(Dir.FWD)
