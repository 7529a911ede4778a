"""``ipsecctl convert`` from strongSwan's swanctl.conf: round trips through the SPD
compiler (the IKE connections carry the input's proposals, identities, modes and
selectors), one warning per construct that is not carried, and keys kept out of
everything but the secrets."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.daemon import read_secrets
from ipsecd.ike.config import Identity
from ipsecd.ike.pki import id_matches
from ipsecd.spd import (
    Action,
    Direction,
    IkeConnection,
    NodeInfo,
    SecretRef,
    compile_node,
    load_text,
)
from ipsecd.spd.compiler import TrafficSelector
from ipsecd.spd.convert import (
    Conversion,
    ConvertError,
    ConvertOptions,
    convert_swanctl,
    render_secrets,
    validate_output,
)

from .conftest import DATA

SAMPLES = DATA / "convert"
HQ = NodeInfo("hq", (ipaddress.ip_address("192.0.2.10"),), {"role": "gateway"})
WEB = NodeInfo("web", (ipaddress.ip_address("192.0.2.11"),), {"role": "web"})
CLUSTER = [HQ, WEB]
BRANCH_PSK = b"Xq3vT8pLw2Rn5sKd9HfJ4mZb7Yc1Ge6A"


def _convert(name: str, **options: object) -> Conversion:
    path = SAMPLES / name
    return convert_swanctl(path.read_text(), name, ConvertOptions(**options))  # type: ignore[arg-type]


def _compiled(conv: Conversion, node: NodeInfo = HQ) -> dict[str, IkeConnection]:
    assert validate_output(conv, "out.spd") == ()
    config = compile_node(load_text(conv.spd, "out.spd"), node, CLUSTER)
    return {c.connection: c for c in config.connections}


def _net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def _pairs(c: IkeConnection) -> set[tuple[TrafficSelector, TrafficSelector]]:
    return set(zip(c.local_ts, c.remote_ts, strict=True))


# -- site-to-site with pre-shared keys ---------------------------------------------------------


def test_psk_site_to_site_round_trip() -> None:
    conv = _convert("swanctl-psk.conf")
    assert conv.warnings == ()
    conns = _compiled(conv)
    assert set(conns) == {"branch", "lab"}
    branch = conns["branch"]
    assert branch.name == "branch/branch/ipv4"
    assert branch.external and branch.peer == "branch"
    assert (str(branch.local_addr), str(branch.remote_addr)) == ("192.0.2.10", "203.0.113.5")
    assert branch.local_id == "192.0.2.10"
    assert branch.remote_id == "fqdn:gw.branch.example.net"
    assert branch.ike_proposals == ("aes256gcm16-prfsha384-ecp384", "aes256-sha256-modp2048")
    assert branch.esp_proposals == ("aes256gcm16-ecp384", "aes256-sha256-modp2048")
    assert branch.mode.value == "tunnel"
    assert _pairs(branch) == {
        (TrafficSelector(_net("10.1.0.0/16")), TrafficSelector(_net("10.2.0.0/16"))),
        (TrafficSelector(_net("10.1.0.0/16")), TrafficSelector(_net("10.3.0.0/24"))),
    }
    assert branch.auth == "psk" and branch.psk == SecretRef("ike-branch")
    assert branch.start == "ondemand"  # start_action = trap
    assert branch.dpd == 30
    assert branch.ike_lifetime == 4 * 3600 + 4 * 360  # rekey_time + over_time (10 %)
    assert branch.child_lifetime == 70 * 60  # life_time
    lab = conns["lab"]
    assert lab.mode.value == "transport"
    assert lab.remote_id == "fqdn:lab-gw"
    assert lab.ike_proposals == ("aes128gcm16-prfsha256-curve25519",)
    assert lab.esp_proposals == ("aes128gcm16",)
    # dynamic[tcp] / dynamic[tcp/22]: the two hosts, TCP, port 22 on the peer's side
    assert _pairs(lab) == {
        (
            TrafficSelector(_net("192.0.2.10/32"), 6, 0),
            TrafficSelector(_net("198.51.100.7/32"), 6, 22),
        )
    }
    assert lab.start == "eager" and lab.dpd == 0  # no dpd_delay: strongSwan does no DPD
    assert lab.psk == SecretRef("ike-lab")


def test_only_the_local_group_runs_the_connections() -> None:
    conv = _convert("swanctl-psk.conf")
    assert _compiled(conv, WEB) == {}


def test_connection_priority_is_the_kernel_policy_priority() -> None:
    conv = _convert("swanctl-psk.conf")
    config = compile_node(load_text(conv.spd, "out.spd"), HQ, CLUSTER)
    lab = [p for p in config.policies if p.selector.dport == 22 or p.selector.sport == 22]
    assert lab and {p.priority for p in lab} == {1000}


def test_psk_values_go_to_the_secrets_only(tmp_path: Path) -> None:
    conv = _convert("swanctl-psk.conf")
    lab_psk = bytes.fromhex("6c61622d707265736861726564206b65792d3031323334353637383961626364")
    assert conv.secrets == {"ike-branch": BRANCH_PSK, "ike-lab": lab_psk}
    assert BRANCH_PSK.decode() not in conv.spd and lab_psk.hex() not in conv.spd
    assert "secret:ike-branch" in conv.spd
    assert "BRANCH" not in repr(conv) and BRANCH_PSK.decode() not in repr(conv)
    # the secrets file is what ipsecd --secrets reads
    path = tmp_path / "vpn.secrets"
    path.write_text(render_secrets(conv.secrets, "swanctl.conf"))
    path.chmod(0o600)
    assert read_secrets(path) == conv.secrets


def test_inline_secrets_put_the_keys_into_the_spd() -> None:
    conv = _convert("swanctl-psk.conf", inline_secrets=True)
    assert conv.secrets == {}
    assert f'auth psk "{BRANCH_PSK.decode()}"' in conv.spd
    assert validate_output(conv, "out.spd", inline_secrets=True) == ()
    with pytest.raises(ConvertError, match="literal keys"):
        validate_output(conv, "out.spd")  # a 0644 file may not hold them
    conns = {
        c.connection: c
        for c in compile_node(
            load_text(conv.spd, "out.spd", file_mode=0o600), HQ, CLUSTER
        ).connections
    }
    psk = conns["branch"].psk
    assert psk is not None and not isinstance(psk, SecretRef)
    assert psk.reveal() == BRANCH_PSK


def test_node_option_selects_the_host_by_name() -> None:
    conv = _convert("swanctl-psk.conf", nodes=("hq",), group="gateways")
    assert "nodes gateways name hq;" in conv.spd
    assert "between gateways and branch;" in conv.spd
    assert set(_compiled(conv)) == {"branch", "lab"}


# -- certificates, templates, pass children --------------------------------------------


def _certificate(subject: x509.Name) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def test_certificate_connection_round_trip() -> None:
    conv = _convert("swanctl-cert.conf")
    assert conv.warnings == ()
    conns = _compiled(conv)
    assert set(conns) == {"partner"}  # 'base' is only a template
    p = conns["partner"]
    assert p.auth == "certificate" and p.psk is None
    assert p.auth_ca == "/etc/swanctl/x509ca/partnerCA.pem"
    assert p.send_cert == "always"
    assert p.dpd == 10  # inherited from the template
    assert str(p.local_addr) == "192.0.2.10"
    # strongSwan writes DNs most general RDN first; the SPD (RFC 4514) most specific first
    assert p.remote_id == "dn:CN=vpn.partner.example, O=Partner GmbH, C=DE"
    assert p.ike_proposals == (
        "aes128gcm16-prfsha256-ecp256",
        "aes128gcm16-prfsha256-curve25519",
        "aes128gcm16-prfsha384-ecp256",
        "aes128gcm16-prfsha384-curve25519",
        "aes256gcm16-prfsha256-ecp256",
        "aes256gcm16-prfsha256-curve25519",
        "aes256gcm16-prfsha384-ecp256",
        "aes256gcm16-prfsha384-curve25519",
    )
    assert p.esp_proposals == ("aes128gcm16-ecp256", "aes128-sha256-modp3072")
    assert p.child_lifetime == 33 * 60  # rekey_time 30m + 10 %
    assert p.start == "eager"
    local = TrafficSelector(_net("10.1.0.0/16"))
    assert _pairs(p) == {
        (TrafficSelector(_net("10.1.0.0/16"), 6, 0), TrafficSelector(_net("10.30.0.0/16"), 6, 443)),
        (local, TrafficSelector(_net("10.31.0.1/32"))),  # 10.31.0.1-10.31.0.6
        (local, TrafficSelector(_net("10.31.0.2/31"))),
        (local, TrafficSelector(_net("10.31.0.4/31"))),
        (local, TrafficSelector(_net("10.31.0.6/32"))),
    }


def test_converted_dn_matches_the_certificate_strongswan_would_accept() -> None:
    """The subject strongSwan's 'C=DE, O=Partner GmbH, CN=vpn.partner.example' names is
    the certificate subject in that ASN.1 order; the converted identity must match it."""
    conv = _convert("swanctl-cert.conf")
    remote_id = _compiled(conv)["partner"].remote_id
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Partner GmbH"),
            x509.NameAttribute(NameOID.COMMON_NAME, "vpn.partner.example"),
        ]
    )
    assert id_matches(_certificate(subject), Identity.parse(remote_id))
    reversed_subject = x509.Name(list(reversed(list(subject))))
    assert not id_matches(_certificate(reversed_subject), Identity.parse(remote_id))


def test_pass_child_becomes_a_bypass_rule_on_the_host() -> None:
    conv = _convert("swanctl-cert.conf")
    assert "bypass udp from 10.1.0.0/16 to 10.30.0.53/32 port 53 on local;" in conv.spd
    config = compile_node(load_text(conv.spd, "out.spd"), HQ, CLUSTER)
    dns = [p for p in config.policies if p.action is Action.ALLOW]
    assert {(p.direction, p.selector.proto, p.selector.dport, p.selector.sport) for p in dns} == {
        (Direction.OUT, 17, 53, 0),
        (Direction.IN, 17, 0, 53),
    }
    other = compile_node(load_text(conv.spd, "out.spd"), WEB, CLUSTER)
    assert not [p for p in other.policies if p.action is Action.ALLOW]


# -- what is not carried -------------------------------------------------------------------------

#: (line of swanctl-unsupported.conf, a piece of the warning for it)
UNSUPPORTED = [
    (3, "'include conf.d/*.conf' is not followed"),
    (7, "IKEv1: ipsecd speaks IKEv2 only"),
    (8, "'aggressive = yes' is not carried"),
    (11, "local_port = 4500 is not carried"),
    (12, "ike transform '3des-sha1-modp1024' dropped: 3DES"),
    (12, "ike transform 'aes256-sha256-modp4096' dropped: the ipsecd IKE engine does not "
         "implement 'modp4096'"),
    (13, "'encap = yes' is not carried"),
    (14, "'mobike = yes' is not carried: MOBIKE"),
    (15, "'vips = 0.0.0.0' is not carried: virtual IPs"),
    (16, "'pools = office' is not carried"),
    (17, "'if_id_in = 42' is not carried: XFRM interface ids"),
    (18, "'reauth_time = 1h' is not carried"),
    (25, "authentication round 'remote-2' (auth = xauth) is not carried"),
    (28, "has 2 children: each becomes its own SPD connection"),
    (31, "'10.9.0.0/16[tcp/1024-65535]' is not carried: port ranges"),
    (31, "'10.8.0.0/16[icmp/8]' is not carried: ICMP types"),
    (32, "'aes192gcm16' dropped: AES-GCM with a 16-octet ICV with 192-bit keys"),
    (32, "extended sequence numbers (esn) are not carried"),
    (33, "'updown = /usr/local/libexec/ipsec/_updown iptables' is not carried"),
    (34, "'mark_in = 42' is not carried: XFRM marks"),
    (35, "'mark_out = 42' is not carried: XFRM marks"),
    (36, "'hostaccess = yes' is not carried"),
    (37, "'ipcomp = yes' is not carried"),
    (38, "'close_action = restart' is not carried"),
    (42, "mode = beet is not carried"),
    (48, "remote_addrs = %any names no address"),
    (62, "remote auth = eap-tls is not carried: EAP"),
    (72, "section 'authorities' is not carried"),
    (79, "secret 'eap-carol' (eap) is not carried"),
]  # fmt: skip


def test_every_unsupported_construct_is_named_with_its_line() -> None:
    conv = _convert("swanctl-unsupported.conf")
    found = [(w.line, w.message) for w in conv.warnings]
    for line, fragment in UNSUPPORTED:
        assert any(n == line and fragment in m for n, m in found), (line, fragment, found)
    assert all(w.filename == "swanctl-unsupported.conf" and w.line > 0 for w in conv.warnings)
    assert all(w.render().startswith(f"swanctl-unsupported.conf:{w.line}: warning: ")
               for w in conv.warnings)  # fmt: skip
    # what can be carried still is, and validates
    conns = _compiled(conv)
    assert set(conns) == {"legacy-net"}
    net = conns["legacy-net"]
    assert net.ike_proposals == ("aes256-sha256-modp2048",)
    assert net.esp_proposals == ("aes256gcm16-ecp256",)
    assert _pairs(net) == {
        (TrafficSelector(_net("10.1.0.0/16")), TrafficSelector(_net("10.7.0.0/16")))
    }
    assert net.remote_id == "203.0.113.9"  # no remote id: the PSK peer's address


def test_unsupported_warnings_never_show_a_secret() -> None:
    conv = _convert("swanctl-unsupported.conf")
    text = "\n".join(w.render() for w in conv.warnings) + "\n".join(conv.notes) + conv.spd
    for secret in ("carols-eap-password", "a shared legacy key that is long enough"):
        assert secret not in text


def test_local_identity_other_than_the_address_is_named() -> None:
    text = (SAMPLES / "swanctl-psk.conf").read_text().replace("id = 192.0.2.10", "id = hq.example")
    conv = convert_swanctl(text, "s.conf")
    assert any(
        w.line == 17 and "local id 'hq.example' is not carried" in w.message for w in conv.warnings
    )
    # ... unless the cluster node of that name is the host: then 'id name' carries it
    conv = convert_swanctl(text, "s.conf", ConvertOptions(nodes=("hq.example",)))
    assert not [w for w in conv.warnings if "local id" in w.message]
    assert "    id name;" in conv.spd


def test_psk_without_a_matching_secret_is_a_reference_and_a_warning() -> None:
    text = (SAMPLES / "swanctl-psk.conf").read_text()
    text = text[: text.index("secrets {")]
    conv = convert_swanctl(text, "s.conf")
    assert conv.secrets == {}
    assert "auth psk secret:branch-psk;" in conv.spd
    assert any(
        w.line == 6 and "no ike secret in this file matches" in w.message for w in conv.warnings
    )
    assert validate_output(conv, "out.spd") == ()


def test_eager_start_against_a_lower_peer_address_warns() -> None:
    text = (SAMPLES / "swanctl-psk.conf").read_text().replace("198.51.100.7", "192.0.2.1")
    conv = convert_swanctl(text, "s.conf")
    assert any(
        "peer 192.0.2.1 has the lower address" in w.message and w.line == 52 for w in conv.warnings
    )


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("connections {\n  a {\n    version = 2\n", 2, "section 'a' is never closed"),
        ("connections {\n}\n}\n", 3, "'}' without a section to close"),
        ('secrets {\n  ike { secret = "abc\n', 2, "unterminated quoted string"),
        ("connections {\n  a : missing {\n  }\n}\n", 2, "template 'missing' is not defined"),
        ("connections {\n  just words\n}\n", 2, "neither 'key = value' nor a section"),
    ],
)
def test_malformed_input_is_an_error_with_its_line(text: str, line: int, message: str) -> None:
    with pytest.raises(ConvertError, match=message) as info:
        convert_swanctl(text, "bad.conf")
    assert info.value.line == line and info.value.render().startswith(f"bad.conf:{line}: error:")


def test_quoted_values_and_comments() -> None:
    text = (
        "connections { # all of them\n"
        "  gw {\n"
        "    remote_addrs = 203.0.113.1   # the gateway\n"
        "    local { auth = psk\n    }\n"
        '    remote { auth = psk\n      id = "gw # one"\n    }\n'
        "    children { c { remote_ts = 10.9.0.0/16\n } }\n"
        "  }\n"
        "}\n"
    )
    conv = convert_swanctl(text, "s.conf")
    assert "peer gw { address 203.0.113.1; }" in conv.spd
    assert any("remote id 'gw # one' is not carried" in w.message for w in conv.warnings)


def test_templates_of_templates() -> None:
    text = (
        "connections {\n"
        "  base {\n    local_addrs = 192.0.2.10\n    dpd_delay = 20s\n"
        "    local {\n      auth = psk\n    }\n    remote {\n      auth = psk\n    }\n  }\n"
        "  mid : base {\n    proposals = aes256gcm16-prfsha256-ecp256\n  }\n"
        "  gw : connections.mid {\n    remote_addrs = 203.0.113.1\n    dpd_delay = 5s\n"
        "    children {\n      net {\n        remote_ts = 10.2.0.0/16\n      }\n    }\n  }\n"
        "}\n"
        'secrets {\n  ike {\n    secret = "a-long-enough-shared-secret"\n  }\n}\n'
    )
    conv = convert_swanctl(text, "t.conf")
    assert conv.warnings == ()
    gw = _compiled(conv)["gw"]
    assert gw.dpd == 5  # its own setting beats the templates'
    assert gw.ike_proposals == ("aes256gcm16-prfsha256-ecp256",)  # from mid
    assert str(gw.local_addr) == "192.0.2.10" and gw.auth == "psk"  # from base, via mid


def test_inputs_are_bounded() -> None:
    with pytest.raises(ConvertError, match="nested deeper than 32"):
        convert_swanctl("a {\n" * 10_000, "deep.conf")
    chain = "".join(f"c{i} : connections.c{i + 1} {{\n}}\n" for i in range(100))
    with pytest.raises(ConvertError, match="templates nested deeper than 32"):
        convert_swanctl("connections {\n" + chain + "c100 {\n}\n}\n", "chain.conf")
    nets = ", ".join(f"10.{i // 256}.{i % 256}.0/24" for i in range(400))
    huge = (
        "connections {\n gw {\n  remote_addrs = 203.0.113.1\n  children {\n   c {\n"
        f"    local_ts = {nets}\n    remote_ts = {nets.replace('10.', '172.')}\n"
        "   }\n  }\n }\n}\n"
    )
    with pytest.raises(ConvertError, match="more than 100000 traffic selector pairs"):
        convert_swanctl(huge, "huge.conf")
    many = "".join(f"  k{i} = v\n" for i in range(5000))
    conv = convert_swanctl(
        "connections {\n gw {\n  remote_addrs = 203.0.113.1\n" + many + "  children {\n"
        "   c {\n    remote_ts = 10.2.0.0/16\n   }\n  }\n }\n}\n",
        "many.conf",
    )
    assert len(conv.warnings) == 1001
    assert "more warnings not listed (at most 1000 are)" in conv.warnings[-1].message
