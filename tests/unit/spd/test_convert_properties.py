"""Property tests for ``ipsecctl convert``: whatever the input, a converter returns a
result whose SPD validates (and holds no literal key), or raises ConvertError."""

from __future__ import annotations

import ipaddress

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipsecd.spd import NodeInfo, compile_node, load_text
from ipsecd.spd.convert import (
    ConvertError,
    ConvertOptions,
    convert_libreswan,
    convert_setkey,
    convert_swanctl,
    validate_output,
)

from .conftest import DATA

SAMPLES = DATA / "convert"
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HOST = NodeInfo("host", (ipaddress.ip_address("192.0.2.10"), ipaddress.ip_address("fd00::10")))

VALUES = st.sampled_from(
    ["192.0.2.10", "203.0.113.5", "2001:db8::5", "%any", "gw.example", "@gw.example",
     "10.1.0.0/16", "10.2.0.0/16[tcp/80]", "dynamic", "dynamic[udp/53]", "::/0", "0.0.0.0/0",
     "fd00::/64", "10.0.0.1-10.0.0.9", "psk", "pubkey", "eap-tls", "tunnel", "transport",
     "pass", "drop", "start", "trap", "none", "aes256gcm16-prfsha384-ecp384",
     "aes256-sha2_256-modp2048", "3des-md5-modp1024", "aes256gcm16", "aes_gcm256-sha2_512",
     "default", "30s", "1h", "0", "yes", "no", "C=CH, O=x, CN=gw", "secret", "rsasig",
     '"quoted # value"', "0x0102", "0sAAEC", "a, b", "start|trap", "-1", "9999999999"]
)  # fmt: skip
SWANCTL_KEYS = st.sampled_from(
    ["local_addrs", "remote_addrs", "version", "proposals", "dpd_delay", "rekey_time",
     "over_time", "send_cert", "mobike", "vips", "auth", "id", "certs", "cacerts",
     "local_ts", "remote_ts", "mode", "esp_proposals", "ah_proposals", "start_action",
     "life_time", "priority", "updown", "secret", "round", "x"]
)  # fmt: skip
SECTIONS = st.sampled_from(
    ["local", "remote", "remote-2", "children", "net", "c1", "ike-1", "eap-x", "gw"]
)
LIBRESWAN_KEYS = st.sampled_from(
    ["left", "right", "leftid", "rightid", "leftsubnet", "rightsubnets", "leftprotoport",
     "rightprotoport", "type", "authby", "leftauth", "ike", "esp", "phase2alg", "pfs",
     "ikelifetime", "salifetime", "dpddelay", "auto", "also", "keyexchange", "mobike",
     "priority", "leftcert", "x"]
)  # fmt: skip


@st.composite
def swanctl_text(draw: st.DrawFn) -> str:
    def section(depth: int) -> str:
        lines = [f"{draw(SWANCTL_KEYS)} = {draw(VALUES)}" for _ in range(draw(st.integers(0, 5)))]
        if depth < 3:
            for _ in range(draw(st.integers(0, 3))):
                lines.append(f"{draw(SECTIONS)} {{\n{section(depth + 1)}\n}}")
        return "\n".join(lines)

    conns = [f"c{i} {{\n{section(0)}\n}}" for i in range(draw(st.integers(0, 3)))]
    secrets = section(2)
    return "connections {\n" + "\n".join(conns) + "\n}\nsecrets {\n" + secrets + "\n}\n"


@st.composite
def libreswan_text(draw: st.DrawFn) -> str:
    out = []
    for i in range(draw(st.integers(1, 4))):
        name = draw(st.sampled_from([f"c{i}", "%default"]))
        lines = [f"conn {name}"]
        if draw(st.booleans()):
            lines.append("    left=" + draw(st.sampled_from(["192.0.2.10", "%defaultroute"])))
            lines.append("    right=" + draw(st.sampled_from(["203.0.113.5", "2001:db8::5"])))
        for _ in range(draw(st.integers(0, 8))):
            key = draw(LIBRESWAN_KEYS)
            value = draw(VALUES) if key != "also" else draw(st.sampled_from(["c0", "c1", "c9"]))
            lines.append(f"    {key}={value}")
        out.append("\n".join(lines))
    return "\n".join(out) + "\n"


def _check(convert: object, text: str) -> None:
    for inline in (False, True):
        try:
            conv = convert(text, "fuzz.conf", ConvertOptions(inline_secrets=inline))  # type: ignore[operator]
        except ConvertError as exc:
            assert exc.render().startswith("fuzz.conf")
            return
        validate_output(conv, "out.spd", inline_secrets=inline)  # raises if invalid
        policy = load_text(conv.spd, "out.spd", file_mode=0o600)
        compile_node(policy, HOST, [HOST])


@FAST
@given(swanctl_text())
def test_swanctl_output_always_validates(text: str) -> None:
    _check(convert_swanctl, text)


@FAST
@given(libreswan_text())
def test_libreswan_output_always_validates(text: str) -> None:
    _check(convert_libreswan, text)


SETKEY_LINES = [
    line
    for name in ("setkey-refused.conf", "setkey-hosts.conf")
    for line in (SAMPLES / name).read_text().split("\n")
]


@FAST
@given(st.lists(st.sampled_from(SETKEY_LINES)))
def test_setkey_output_always_validates(lines: list[str]) -> None:
    _check(convert_setkey, "\n".join(lines))


@FAST
@given(st.text(max_size=300))
def test_any_text_converts_or_is_refused(text: str) -> None:
    for convert in (convert_swanctl, convert_libreswan, convert_setkey):
        _check(convert, text)
