"""``auth certificate`` options (issue #11): a CA file, a certificate and key for peers
outside the cluster, when the chain is sent, older signature methods."""

from __future__ import annotations

import ipaddress

import pytest

from ipsecd.spd import NodeInfo, SpdError, compile_node, load_text
from ipsecd.spd.output import config_to_text

NODES = [
    NodeInfo("node-a", (ipaddress.ip_address("192.0.2.1"),)),
    NodeInfo("node-b", (ipaddress.ip_address("192.0.2.2"),)),
]
PEER = 'peer gw { address 203.0.113.5; id "CN=gw.example.net, O=Partner"; }\n'


def _conns(text: str) -> dict[str, object]:
    cfg = compile_node(load_text(text, "f.spd"), NODES[0], NODES)
    return {c.name: c for c in cfg.connections}


def _errors(text: str) -> list[tuple[int, int, str, str]]:
    with pytest.raises(SpdError) as info:
        load_text(text, "f.spd")
    return [(d.line, d.col, d.message, d.hint) for d in info.value.diagnostics if d.is_error]


def test_default_is_the_cluster_ca_and_the_nodes_certificate() -> None:
    (conn,) = _conns("connection mesh between all and all;").values()
    assert conn.auth == "certificate"  # type: ignore[attr-defined]
    assert (conn.auth_ca, conn.auth_cert, conn.auth_key) == (None, None, None)  # type: ignore[attr-defined]
    assert conn.send_cert == "always" and not conn.legacy_auth  # type: ignore[attr-defined]


def test_every_option_reaches_the_compiled_connection_and_its_text() -> None:
    text = PEER + (
        "connection vpn { between all and gw;\n"
        '  auth certificate ca "/etc/ipsecd/partner-ca.pem" cert /etc/ipsecd/gw-side.pem\n'
        '       key "/etc/ipsecd/gw-side.key" sendcert ifasked legacy; }\n'
    )
    (conn,) = _conns(text).values()
    assert conn.auth_ca == "/etc/ipsecd/partner-ca.pem"  # type: ignore[attr-defined]
    assert conn.auth_cert == "/etc/ipsecd/gw-side.pem"  # type: ignore[attr-defined]
    assert conn.auth_key == "/etc/ipsecd/gw-side.key"  # type: ignore[attr-defined]
    assert conn.send_cert == "ifasked" and conn.legacy_auth  # type: ignore[attr-defined]
    assert conn.remote_id == "dn:CN=gw.example.net, O=Partner"  # type: ignore[attr-defined]
    cfg = compile_node(load_text(text, "f.spd"), NODES[0], NODES)
    rendered = config_to_text(cfg)
    assert (
        'auth certificate ca "/etc/ipsecd/partner-ca.pem" cert "/etc/ipsecd/gw-side.pem" '
        'key "/etc/ipsecd/gw-side.key" sendcert ifasked legacy'
    ) in rendered


@pytest.mark.parametrize(
    ("clause", "where", "message"),
    [
        ('auth certificate cert "/a.pem"', 37, "'cert' and 'key' go together"),
        ('auth certificate key "/a.key"', 37, "'cert' and 'key' go together"),
        ("auth certificate ca ca.pem", 57, "'ca' wants an absolute file path, found 'ca.pem'"),
        ('auth certificate ca "/a" ca "/b"', 62, "'ca' given twice"),
        ("auth certificate sendcert sometimes", 63, "expected when to send, found 'sometimes'"),
        ("auth certificate ca;", 56, "'ca' wants an absolute file path, found ';'"),
    ],
)
def test_option_errors_name_the_place_and_the_fix(clause: str, where: int, message: str) -> None:
    errors = _errors(f"connection c {{ between all and all; {clause}; }}\n")
    assert errors, clause
    line, col, got, hint = errors[0]
    assert (line, col) == (1, where) and got.startswith(message), errors
    assert hint


def test_psk_takes_no_certificate_options() -> None:
    errors = _errors('connection c { between all and all; auth psk secret:k ca "/x"; }\n')
    assert errors and errors[0][2] == "expected a connection clause, found 'ca'"
