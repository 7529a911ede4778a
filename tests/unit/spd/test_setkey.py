"""setkey(8) statements: the corpus validates and compiles; statement semantics."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from ipsecd.spd import (
    Action,
    Direction,
    IpsecProto,
    Level,
    Mode,
    Secret,
    compile_node,
    load_file,
    load_nodes_file,
    load_text,
)

from .conftest import DATA, EXAMPLES

CORPUS = sorted((DATA / "corpus").glob("*.conf"))
KEY288 = "0x" + "ab" * 36


@pytest.mark.parametrize("conf", CORPUS, ids=[c.stem for c in CORPUS])
def test_corpus_validates_and_compiles(conf: Path, private_copy) -> None:  # type: ignore[no-untyped-def]
    policy = load_file(private_copy(conf))
    assert policy.spd or policy.sas
    directory = load_nodes_file(DATA / "corpus" / "nodes")
    total = 0
    for node in directory:
        config = compile_node(policy, node, directory)
        total += len(config.policies) + len(config.sas)
    assert total > 0, "no node of the directory got anything from this file"


def test_example_setkey_conf_validates_unchanged(private_copy) -> None:  # type: ignore[no-untyped-def]
    policy = load_file(private_copy(EXAMPLES / "setkey.conf"))
    assert len(policy.sas) == 6 and len(policy.spd) == 11


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 6


def test_spdadd_fields() -> None:
    p = load_text(
        "spdadd 10.0.11.41/32[21] 10.0.11.33/32[any] tcp"
        " -P out prio 100 ipsec esp/tunnel/192.168.0.1-192.168.1.2/require"
        " ah/transport//unique:7;"
    )
    e = p.spd[0]
    assert e.selector.src == ipaddress.ip_network("10.0.11.41/32")
    assert (e.selector.sport, e.selector.dport, e.selector.proto) == (21, 0, 6)
    assert (e.direction, e.action, e.priority) == (Direction.OUT, Action.IPSEC, 0x80000000 - 100)
    t1, t2 = e.templates
    assert (t1.proto, t1.mode, str(t1.src), str(t1.dst), t1.level) == (
        IpsecProto.ESP,
        Mode.TUNNEL,
        "192.168.0.1",
        "192.168.1.2",
        Level.REQUIRE,
    )
    assert (t2.proto, t2.level, t2.reqid, t2.src) == (IpsecProto.AH, Level.UNIQUE, 7, None)


@pytest.mark.parametrize(
    ("spec", "kernel"),
    [("prio high", 0x40000000), ("priority low + 5", 0xC0000000 - 5), ("prio def-3", 0x80000003)],
)
def test_priority_forms(spec: str, kernel: int) -> None:
    p = load_text(f"spdadd 10.0.0.1 10.0.0.2 any -P in {spec} none;")
    assert p.spd[0].priority == kernel


def test_icmp6_type_code_and_port_split_across_tokens() -> None:
    p = load_text(
        "spdadd ::/0 ::/0 icmp6 135,0 -P in none; spdadd 10.0.0.1 [22] 10.0.0.2 tcp -P out none;"
    )
    a, b = p.spd
    assert (a.selector.proto, a.selector.icmp_type, a.selector.icmp_code) == (58, 135, 0)
    assert b.selector.sport == 22


def test_add_fields_and_key_material() -> None:
    p = load_text(
        "add -n 192.0.2.1 192.0.2.2 esp 0x1000 -m tunnel -r 64 -u 9 -f random-pad"
        f" -lh 3600 -ls 3000 -bh 100 -bs 90 -E aes-gcm-16 {KEY288};"
    )
    sa = p.sas[0]
    assert (sa.spi, sa.mode, sa.replay, sa.reqid, sa.enc) == (
        0x1000,
        Mode.TUNNEL,
        64,
        9,
        "aes-gcm-16",
    )
    assert sa.lifetime.hard_seconds == 3600 and sa.lifetime.soft_bytes == 90
    assert sa.flags == ("random-pad",)
    assert isinstance(sa.enc_key, Secret) and sa.enc_key.reveal() == bytes.fromhex("ab" * 36)
    assert p.has_literal_keys


def test_quoted_and_odd_length_keys() -> None:
    p = load_text(
        'add 192.0.2.1 192.0.2.2 ah 0x1000 -A hmac-sha1 "20-byte-key-20bytes!";'
        " add 192.0.2.1 192.0.2.2 ah 0x1001 -A aes-xcbc-mac 0x123456789abcdef0123456789abcdef;"
    )
    a, b = p.sas
    assert isinstance(a.auth_key, Secret) and a.auth_key.reveal() == b"20-byte-key-20bytes!"
    assert isinstance(b.auth_key, Secret) and b.auth_key.bits == 128
    assert any("hmac-sha1" in w.message for w in p.warnings)  # RFC 8221 MUST-


def test_secret_reference_as_key_skips_length_check() -> None:
    p = load_text("add 192.0.2.1 192.0.2.2 esp 0x1000 -E aes-gcm-16 secret:k1;")
    assert str(p.sas[0].enc_key) == "secret:k1"
    assert not p.has_literal_keys


def test_flush_spdflush_delete_update_semantics() -> None:
    p = load_text(
        f"add 192.0.2.1 192.0.2.2 esp 0x1000 -E aes-gcm-16 {KEY288};\n"
        "spdadd 10.0.0.1 10.0.0.2 any -P out none;\n"
        "flush;\nspdflush;\n"
        f"add 192.0.2.1 192.0.2.2 esp 0x1001 -E aes-gcm-16 {KEY288};\n"
        f"add 192.0.2.1 192.0.2.2 esp 0x1002 -E aes-gcm-16 {KEY288};\n"
        "delete 192.0.2.1 192.0.2.2 esp 0x1002;\n"
        "spdadd 10.0.0.1 10.0.0.2 any -P out none;\n"
        "spdupdate 10.0.0.1 10.0.0.2 any -P out discard;\n"
        "spdadd 10.0.0.3 10.0.0.4 any -P out none;\n"
        "spddelete 10.0.0.3 10.0.0.4 any -P out;\n"
    )
    assert [s.spi for s in p.sas] == [0x1001]
    assert [(str(e.selector.src), e.action) for e in p.spd] == [("10.0.0.1/32", Action.BLOCK)]
    messages = " ".join(w.message for w in p.warnings)
    assert "flush discards the 1 SAs" in messages and "spdflush discards the 1" in messages


def test_exit_ends_the_file() -> None:
    p = load_text("spdadd 10.0.0.1 10.0.0.2 any -P out none;\nexit;\nthis is not parsed;")
    assert len(p.spd) == 1
    assert p.warnings[-1].message == "statement after 'exit' is ignored"


def test_query_statements_are_ignored_with_a_warning() -> None:
    p = load_text("dump esp; spddump; get 192.0.2.1 192.0.2.2 esp 0x1000;")
    assert len(p.warnings) == 3 and not p.spd


def test_multi_line_statement_with_tabs_and_comments() -> None:
    p = load_text(
        "spdadd\t10.0.0.1\n  10.0.0.2 # peer\n  any -P out ipsec\n"
        "  esp/transport//require # inner\n  ah/transport//require\n;\n"
    )
    assert len(p.spd[0].templates) == 2


def test_every_accepted_setkey_algorithm_has_a_kernel_name() -> None:
    from ipsecd.spd.algorithms import AUTH, ENC
    from ipsecd.xfrm import Aead, Auth, setkey_encryption, setkey_integrity

    for info in ENC.values():
        if info.status != "forbid":
            assert setkey_encryption(info.name, b"").name
    for info in AUTH.values():
        if info.status != "forbid":
            assert setkey_integrity(info.name, b"").trunc_bits >= 0
    assert setkey_encryption("aes-gcm-16", b"") == Aead("rfc4106(gcm(aes))", b"", 128)
    assert setkey_integrity("null", b"") == Auth("digest_null", b"", 0)
