"""``ipsecctl convert`` from setkey.conf: the statements pass through (they are SPD),
manual keys move to the secrets file, refused statements are taken out with a warning
naming their line; the compiled result equals the input's."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from ipsecd.spd import NodeInfo, SecretRef, compile_node, load_text
from ipsecd.spd.convert import (
    Conversion,
    ConvertError,
    ConvertOptions,
    convert_setkey,
    validate_output,
)

from .conftest import DATA, EXAMPLES

SAMPLES = DATA / "convert"
HOST = NodeInfo("host-1", (ipaddress.ip_address("192.0.2.1"),), {})
PEER = NodeInfo("host-2", (ipaddress.ip_address("192.0.2.2"),), {})
CLUSTER = [HOST, PEER]


def _convert(name: str, **options: object) -> tuple[str, Conversion]:
    text = (SAMPLES / name).read_text()
    return text, convert_setkey(text, name, ConvertOptions(**options))  # type: ignore[arg-type]


@pytest.mark.parametrize("node", [HOST, PEER])
def test_round_trip_compiles_to_the_same_policies_and_sas(node: NodeInfo) -> None:
    text, conv = _convert("setkey-hosts.conf")
    assert conv.warnings == ()
    assert validate_output(conv, "out.spd") == ()
    before = compile_node(load_text(text, "setkey-hosts.conf"), node, CLUSTER)
    after = compile_node(load_text(conv.spd, "out.spd"), node, CLUSTER)
    strip = lambda ps: [dataclasses.replace(p, origin="") for p in ps]  # noqa: E731
    assert strip(after.policies) == strip(before.policies)
    assert len(after.sas) == len(before.sas) > 0
    for old, new in zip(before.sas, after.sas, strict=True):
        assert dataclasses.replace(new, enc_key=None, auth_key=None, loc=old.loc) == (
            dataclasses.replace(old, enc_key=None, auth_key=None)
        )
        for old_key, new_key in ((old.enc_key, new.enc_key), (old.auth_key, new.auth_key)):
            if old_key is None:
                assert new_key is None
                continue
            assert isinstance(new_key, SecretRef)
            assert conv.secrets[new_key.name] == old_key.reveal()  # type: ignore[union-attr]


def test_manual_keys_leave_the_spd_text() -> None:
    _, conv = _convert("setkey-hosts.conf")
    assert sorted(conv.secrets) == [
        "esp-0x1001-enc",
        "esp-0x1002-enc",
        "esp-0x3001-auth",
        "esp-0x3001-enc",
        "esp-0x3002-auth",
        "esp-0x3002-enc",
    ]
    assert conv.secrets["esp-0x3001-enc"] == b"0123456789abcdef"  # a "string" key
    for value in conv.secrets.values():
        assert value.hex() not in conv.spd.lower()
    assert '"0123456789abcdef"' not in conv.spd
    assert "-E aes-cbc secret:esp-0x3001-enc -A hmac-sha2-256 secret:esp-0x3001-auth;" in conv.spd
    # comments, layout and the other statements stay as they were
    assert "# 192.0.2.1 <-> 192.0.2.2, ESP transport mode" in conv.spd
    assert "spdadd 0.0.0.0/0[any] 0.0.0.0/0[53] udp -P out prio high none;" in conv.spd


def test_inline_secrets_keep_the_file_as_it_is() -> None:
    text, conv = _convert("setkey-hosts.conf", inline_secrets=True)
    assert conv.secrets == {}
    assert text in conv.spd
    assert validate_output(conv, "out.spd", inline_secrets=True) == ()


def test_the_example_setkey_conf_converts_cleanly() -> None:
    text = (EXAMPLES / "setkey.conf").read_text()
    conv = convert_setkey(text, "setkey.conf")
    assert conv.warnings == ()
    assert len(conv.secrets) == 7
    assert validate_output(conv, "out.spd") == ()


REFUSED = [
    (3, "'spdadd' statement not carried: 'gw.example.net' is not an IP address"),
    (4, "'add' statement not carried"),
    (6, "'spdadd' statement not carried: a policy for this selector and direction 'out' "
        "already exists"),
    (7, "'spdadd' statement not carried: 'spdadd tagged'"),
    (8, "security context (-ctx) is ignored"),
    (10, "'get' only shows kernel state and is ignored here"),
]  # fmt: skip


def test_refused_statements_are_taken_out_with_their_line() -> None:
    _, conv = _convert("setkey-refused.conf")
    found = [(w.line, w.message) for w in conv.warnings]
    for line, fragment in REFUSED:
        assert any(n == line and fragment in m for n, m in found), (line, fragment, found)
    assert len(conv.warnings) == len(REFUSED)
    assert validate_output(conv, "out.spd") == ()
    # the dropped statements stay visible as comments, with their keys masked
    assert "# not carried: spdadd 192.0.2.1 gw.example.net any" in conv.spd
    assert "# not carried: add 192.0.2.1 192.0.2.2 esp 0x2001 -E des-cbc 0x****" in conv.spd
    assert "0102030405060708;" not in conv.spd
    policy = load_text(conv.spd, "out.spd")
    assert len(policy.spd) == 2  # lines 5 and 11
    assert [s.spi for s in policy.sas] == [0x2002]


def test_statements_sharing_a_line_keep_their_neighbours() -> None:
    text = (
        "spdadd 192.0.2.1 192.0.2.2 any -P out none; spdadd 192.0.2.1 bad.example any -P "
        "out none; spdadd 192.0.2.1 192.0.2.3 any -P out none;\n"
    )
    conv = convert_setkey(text, "s.conf")
    assert [w.line for w in conv.warnings] == [1]
    policy = load_text(conv.spd, "out.spd")
    assert sorted(str(e.selector.dst) for e in policy.spd) == ["192.0.2.2/32", "192.0.2.3/32"]


def test_a_file_that_is_not_setkey_is_an_error() -> None:
    with pytest.raises(ConvertError, match="no statement of it is one the SPD accepts"):
        convert_setkey("connections {\n  a {\n  }\n}\n", "swanctl.conf")
