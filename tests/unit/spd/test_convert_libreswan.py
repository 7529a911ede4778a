"""``ipsecctl convert`` from Libreswan's ipsec.conf (+ ipsec.secrets): %default and
also= inheritance, several conns, round trips through the SPD compiler, and one
warning per construct that is not carried."""

from __future__ import annotations

import ipaddress

import pytest

from ipsecd.spd import Action, IkeConnection, NodeInfo, SecretRef, compile_node, load_text
from ipsecd.spd.compiler import TrafficSelector
from ipsecd.spd.convert import (
    Conversion,
    ConvertError,
    ConvertOptions,
    convert_libreswan,
    validate_output,
)

from .conftest import DATA

SAMPLES = DATA / "convert"
BOSTON = NodeInfo("boston", (ipaddress.ip_address("192.0.2.10"),), {})
OTHER = NodeInfo("other", (ipaddress.ip_address("192.0.2.99"),), {})
CLUSTER = [BOSTON, OTHER]
NYC_PSK = b"n3wY0rk-is-a-long-and-random-psk"
CHICAGO_PSK = bytes.fromhex("0123456789abcdef0123456789abcdef")


def _convert(
    name: str = "libreswan.conf", secrets: str | None = "libreswan.secrets", **options: object
) -> Conversion:
    return convert_libreswan(
        (SAMPLES / name).read_text(),
        name,
        ConvertOptions(**options),  # type: ignore[arg-type]
        secrets_text=(SAMPLES / secrets).read_text() if secrets else None,
        secrets_filename=secrets or "ipsec.secrets",
    )


def _compiled(conv: Conversion, node: NodeInfo = BOSTON) -> dict[str, IkeConnection]:
    assert validate_output(conv, "out.spd") == ()
    config = compile_node(load_text(conv.spd, "out.spd"), node, CLUSTER)
    return {c.connection: c for c in config.connections}


def _net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def _pairs(c: IkeConnection) -> set[tuple[TrafficSelector, TrafficSelector]]:
    return set(zip(c.local_ts, c.remote_ts, strict=True))


def test_conns_with_default_and_also_round_trip() -> None:
    conv = _convert()
    assert [(w.filename, w.line) for w in conv.warnings] == [
        ("libreswan.conf", 3),  # config setup: uniqueids
        ("libreswan.secrets", 4),  # the RSA entry
    ]
    conns = _compiled(conv)
    assert set(conns) == {"nyc-1x1", "nyc-1x2", "chicago", "db"}  # site-base: a template
    nyc1, nyc2, chicago, db = conns["nyc-1x1"], conns["nyc-1x2"], conns["chicago"], conns["db"]
    # rightsubnets={a b}: one connection per pair, as Libreswan's nyc/1x1, nyc/1x2
    assert _pairs(nyc1) == {(TrafficSelector(_net("10.10.0.0/16")),
                             TrafficSelector(_net("10.20.0.0/16")))}  # fmt: skip
    assert _pairs(nyc2) == {(TrafficSelector(_net("10.10.0.0/16")),
                             TrafficSelector(_net("10.21.0.0/16")))}  # fmt: skip
    for c in (nyc1, nyc2):
        assert c.peer == "nyc" and str(c.remote_addr) == "203.0.113.20"
        assert c.remote_id == "fqdn:nyc.example.com"
        assert c.mode.value == "tunnel" and c.start == "eager"  # auto=start
        # ike=aes256-sha2_256;dh19,aes_gcm256-sha2_512-dh20 (from also=site-base)
        assert c.ike_proposals == ("aes256-sha256-ecp256", "aes256gcm16-prfsha512-ecp384")
        # esp=aes_gcm256,aes256-sha2_256 with pfs=yes (the default): the IKE groups
        assert c.esp_proposals == (
            "aes256gcm16-ecp256",
            "aes256gcm16-ecp384",
            "aes256-sha256-ecp256",
            "aes256-sha256-ecp384",
        )
        assert (c.ike_lifetime, c.child_lifetime, c.dpd) == (8 * 3600, 3600, 30)  # %default
        assert c.psk == SecretRef("nyc-psk")
    assert chicago.remote_id == "fqdn:chicago.example.com"
    assert chicago.esp_proposals == ("aes256gcm16", "aes256-sha256")  # pfs=no
    assert chicago.child_lifetime == 2 * 3600  # its own salifetime beats %default
    assert chicago.start == "ondemand"  # auto=ondemand
    assert chicago.psk == SecretRef("chicago-psk")
    assert db.mode.value == "transport" and db.start == "passive"  # auto=add
    assert db.auth == "certificate"
    assert db.remote_id == "dn:CN=db.example.com, O=Example, C=US"
    assert db.ike_proposals == ("aes128gcm16-prfsha256-curve25519",)
    assert db.esp_proposals == ("aes128gcm16-curve25519",)
    assert _pairs(db) == {
        (TrafficSelector(_net("192.0.2.10/32"), 6, 0),
         TrafficSelector(_net("192.0.2.20/32"), 6, 5432))
    }  # fmt: skip
    assert conv.secrets == {"nyc-psk": NYC_PSK, "chicago-psk": CHICAGO_PSK}
    assert NYC_PSK.decode() not in conv.spd and CHICAGO_PSK.hex() not in conv.spd


def test_passthrough_conn_is_a_bypass_rule() -> None:
    conv = _convert()
    assert "bypass udp from 10.10.0.0/16 to 192.0.2.53/32 port 53 on local;" in conv.spd
    config = compile_node(load_text(conv.spd, "out.spd"), BOSTON, CLUSTER)
    assert any(
        p.action is Action.ALLOW and p.selector.dport == 53 and p.selector.proto == 17
        for p in config.policies
    )


def test_the_other_ends_file_with_local_side_right() -> None:
    """The same ipsec.conf read as the NYC gateway's: right is this host."""
    conv = _convert(local_side="right", nodes=("nyc-gw",))
    assert "nodes local name nyc-gw;" in conv.spd
    nyc = NodeInfo("nyc-gw", (ipaddress.ip_address("203.0.113.20"),), {})
    config = compile_node(load_text(conv.spd, "out.spd"), nyc, [nyc])
    conns = {c.connection: c for c in config.connections}
    assert str(conns["nyc-1x1"].remote_addr) == "192.0.2.10"
    assert _pairs(conns["nyc-1x1"]) == {(TrafficSelector(_net("10.20.0.0/16")),
                                         TrafficSelector(_net("10.10.0.0/16")))}  # fmt: skip
    # no leftid: a PSK peer identifies by its address
    assert conns["nyc-1x1"].remote_id == "192.0.2.10"


def test_defaultroute_marks_the_local_side() -> None:
    text = (
        "conn a\n    left=203.0.113.1\n    right=%defaultroute\n    rightsubnet=10.1.0.0/16\n"
        "    leftsubnet=10.2.0.0/16\n    authby=secret\n    auto=start\n"
    )
    conv = convert_libreswan(text, "a.conf")
    assert "peer a { address 203.0.113.1; }" in conv.spd
    assert "traffic from 10.1.0.0/16 to 10.2.0.0/16;" in conv.spd
    assert not [n for n in conv.notes if "taken as this host's side" in n]  # not guessed
    # the host's address is not in the file: the group needs --node
    assert "nodes local name local;" in conv.spd
    assert any(w.line == 0 and "give --node NAME" in w.message for w in conv.warnings)
    conv = convert_libreswan(text, "a.conf", ConvertOptions(nodes=("gw1", "gw2")))
    assert "nodes local name gw1, gw2;" in conv.spd
    assert not [w for w in conv.warnings if "--node" in w.message]


def test_without_secrets_file_psk_conns_reference_a_secret() -> None:
    conv = _convert(secrets=None)
    assert conv.secrets == {}
    assert "auth psk secret:nyc-psk;" in conv.spd
    assert any("no secrets file given" in w.message for w in conv.warnings)
    assert validate_output(conv, "out.spd") == ()


UNSUPPORTED = [
    (2, "'include /etc/ipsec.d/*.conf' is not followed"),
    (4, "config setup: daemon settings are not converted: virtual-private"),
    (10, "leftid=@office.example.com is not carried"),
    (11, "'leftsourceip=10.1.0.1' is not carried"),
    (13, "'leftupdown=/usr/libexec/ipsec/_updown' is not carried: updown scripts"),
    (17, "keyexchange=ikev1 is IKEv1"),
    (18, "'narrowing=yes' is not carried"),
    (19, "'mobike=yes' is not carried: MOBIKE"),
    (20, "'mark=7/0xffffffff' is not carried: XFRM marks"),
    (21, "'vti-interface=vti01' is not carried: VTI"),
    (22, "esp transform '3des-sha1-ecp256' dropped: 3DES"),
    (27, "right=%any names no address"),
    (28, "'rightaddresspool=10.99.0.10-10.99.0.200' is not carried"),
    (35, "authentication 'null' is not carried"),
    (44, "auto=ignore (Libreswan does not load it); not converted"),
]


def test_every_unsupported_construct_is_named_with_its_line() -> None:
    conv = _convert("libreswan-unsupported.conf", secrets=None)
    found = [(w.line, w.message) for w in conv.warnings if w.filename.endswith(".conf")]
    for line, fragment in UNSUPPORTED:
        assert any(n == line and fragment in m for n, m in found), (line, fragment, found)
    # nothing is said about the xauth keys of the ignored conn, or about certificates
    # for a conn that is dropped for its NULL authentication
    assert not [m for _, m in found if "xauthclient" in m or "no rightid" in m]
    conns = _compiled(conv)
    assert set(conns) == {"office"}
    office = conns["office"]
    assert office.esp_proposals == ("aes256gcm16-ecp256", "aes256gcm16-modp3072")
    assert _pairs(office) == {(TrafficSelector(_net("10.1.0.0/16")),
                               TrafficSelector(_net("10.40.0.0/16")))}  # fmt: skip
    assert "discard from @self to 203.0.113.66/32 on local;" in conv.spd  # type=drop


def test_secret_entries_other_than_psk_are_named() -> None:
    conv = _convert()
    (rsa,) = [w for w in conv.warnings if w.filename == "libreswan.secrets"]
    assert rsa.line == 4 and "RSA entry is not carried" in rsa.message


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("  left=1.2.3.4\n", 1, "an indented setting outside"),
        ("conn a\n    also=b\n", 2, "also=b names no conn section"),
        ("conn a\n    also=b\nconn b\n    also=a\n", 4, "also=a includes itself"),
        ("conn a\n    this is not a setting\n", 2, "expected 'key=value'"),
        ("frobnicate\n", 1, "expected 'conn NAME'"),
    ],
)
def test_malformed_input_is_an_error_with_its_line(text: str, line: int, message: str) -> None:
    with pytest.raises(ConvertError, match=message) as info:
        convert_libreswan(text, "bad.conf")
    assert info.value.line == line


def test_strongswan_legacy_ipsec_conf_spellings() -> None:
    """strongSwan's ipsec.conf has the same syntax; its proposals are strongSwan's."""
    text = (
        "conn %default\n    keyexchange=ikev2\n\n"
        "conn site\n    left=192.0.2.10\n    leftsubnet=10.1.0.0/16\n"
        "    right=203.0.113.5\n    rightsubnet=10.2.0.0/16\n    rightid=@gw.example\n"
        "    authby=psk\n    ike=aes256gcm16-prfsha384-ecp384!\n    esp=aes256gcm16-ecp384!\n"
        "    pfs=no\n    auto=start\n"
    )
    conv = convert_libreswan(text, "ipsec.conf", secrets_text=': PSK "a-long-enough-shared-key"')
    site = _compiled(conv)["site"]
    assert site.ike_proposals == ("aes256gcm16-prfsha384-ecp384",)
    assert site.esp_proposals == ("aes256gcm16-ecp384",)
    assert conv.secrets == {"site-psk": b"a-long-enough-shared-key"}  # the wildcard entry


def test_inputs_are_bounded() -> None:
    chain = "".join(f"conn c{i}\n    also=c{i + 1}\n" for i in range(100))
    with pytest.raises(ConvertError, match="also= nested deeper than 32"):
        convert_libreswan(chain + "conn c100\n    left=192.0.2.1\n", "chain.conf")
    subnets = " ".join(f"10.{i // 256}.{i % 256}.0/24" for i in range(400))
    huge = (
        "conn x\n    left=192.0.2.1\n    right=192.0.2.2\n    authby=secret\n"
        f"    leftsubnets={{{subnets}}}\n    rightsubnets={{{subnets.replace('10.', '172.')}}}\n"
        "    auto=start\n"
    )
    with pytest.raises(ConvertError, match="more than 100000 traffic selector pairs"):
        convert_libreswan(huge, "huge.conf")
