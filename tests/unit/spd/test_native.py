"""Native statements: defaults, macros, proposals, groups, connections, rules."""

from __future__ import annotations

import ipaddress

import pytest

from ipsecd.spd import Action, Direction, IpsecProto, Level, Mode, SpdError, load_text


def test_defaults_block_sets_every_knob() -> None:
    p = load_text(
        "defaults { policy discard; esp_trans_deflev require; esp_net_deflev require;"
        " ah_trans_deflev require; ah_net_deflev use; dfbit set; ecn on; log unmatched;"
        " debug on; message verbose; socket_policy ike entrust; }"
    )
    d = p.defaults
    assert (d.def_policy, d.esp_trans_deflev, d.esp_net_deflev) == ("discard", "require", "require")
    assert (d.ah_trans_deflev, d.ah_net_deflev, d.dfbit) == ("require", "use", "set")
    assert d.ecn and d.log_unmatched and d.debug
    assert d.message_level == "verbose"
    assert d.socket_policy_ike == "entrust" and d.socket_policy_control == "bypass"


def test_defaults_are_kame_defaults_when_absent() -> None:
    d = load_text("").defaults
    assert (d.def_policy, d.esp_trans_deflev, d.dfbit, d.ecn, d.log_unmatched) == (
        "none",
        "use",
        "copy",
        False,
        False,
    )


def test_one_line_default_and_def_policy_alias() -> None:
    assert load_text("defaults def_policy discard;").defaults.def_policy == "discard"


def test_macros_expand_whole_words_and_prefixes() -> None:
    p = load_text(
        "gw = 192.0.2.1; peer = 192.0.2.2;\n"
        "spdadd $gw/32[22] $peer tcp -P out ipsec esp/transport//require;"
    )
    sel = p.spd[0].selector
    assert sel.src == ipaddress.ip_network("192.0.2.1/32") and sel.sport == 22
    assert sel.dst == ipaddress.ip_network("192.0.2.2/32")


def test_proposals_and_connection_clauses() -> None:
    p = load_text(
        "proposal ike strong aes256gcm16-prfsha384-ecp384, aes256-sha256-modp3072;\n"
        "proposal esp fast aes128gcm16;\n"
        "nodes web name a, b;\n"
        "nodes db label role=db+zone=x, tier=data;\n"
        "nodes lan address 10.0.0.0/8, fd00::/8;\n"
        "connection c { between web and db; traffic tcp port 5432; tunnel;"
        " auth psk secret:k; ike strong lifetime 2h; esp fast lifetime 20m; dpd off;"
        " priority 50; id name; level unique; }\n"
    )
    c = p.connections[0]
    assert (c.a_group, c.b_group, c.mode, c.level) == ("web", "db", Mode.TUNNEL, Level.UNIQUE)
    assert (c.ike_proposal, c.ike_lifetime, c.child_proposal, c.child_lifetime) == (
        "strong",
        7200,
        "fast",
        1200,
    )
    assert (c.dpd, c.priority, c.local_id, c.auth.kind) == (0, 50, "name", "psk")
    assert c.traffic[0].proto == 6 and c.traffic[0].b_port == 5432
    assert p.groups["db"].labels == ((("role", "db"), ("zone", "x")), (("tier", "data"),))
    assert len(p.groups["lan"].prefixes) == 2


def test_one_line_connection_has_defaults() -> None:
    c = load_text("connection m between all and all;").connections[0]
    assert (c.mode, c.protocols, c.level, c.auth.kind) == (
        Mode.TRANSPORT,
        (IpsecProto.ESP,),
        Level.REQUIRE,
        "certificate",
    )


def test_ah_and_esp_make_a_bundle_in_setkey_order() -> None:
    c = load_text("connection m { between all and all; ah; esp; }").connections[0]
    assert c.protocols == (IpsecProto.ESP, IpsecProto.AH)


def test_rules() -> None:
    p = load_text(
        "nodes web name a;\n"
        "bypass udp port 53;\n"
        "discard tcp from 192.0.2.0/24 to @self port 23 dir in on web priority 5;\n"
    )
    r1, r2 = p.rules
    assert (r1.action, r1.proto, r1.either_port) == (Action.ALLOW, 17, 53)
    assert (r2.action, r2.dport, r2.directions, r2.group, r2.priority) == (
        Action.BLOCK,
        23,
        (Direction.IN,),
        "web",
        5,
    )


def test_connection_without_between_is_an_error() -> None:
    with pytest.raises(SpdError, match="has no 'between' clause"):
        load_text("connection x { mode tunnel; }")


def test_canonical_ignores_comments_and_layout_but_not_meaning() -> None:
    a = load_text("bypass udp port 53; # dns\n")
    b = load_text("# header\n\nbypass   udp\n  port 53 ;")
    c = load_text("bypass udp port 54;")
    assert a.canonical() == b.canonical() and a.digest() == b.digest()
    assert a.digest() != c.digest()


def test_canonical_changes_with_literal_key_but_never_shows_it() -> None:
    key1 = "0x" + "11" * 36
    key2 = "0x" + "22" * 36
    tmpl = "add 192.0.2.1 192.0.2.2 esp 0x1000 -E aes-gcm-16 {};"
    a = load_text(tmpl.format(key1))
    b = load_text(tmpl.format(key2))
    assert a.digest() != b.digest()
    assert "11" * 36 not in a.canonical() and "22" * 36 not in b.canonical()


def test_overlap_warning_names_both_locations() -> None:
    p = load_text(
        "spdadd 10.0.0.0/8 10.1.0.0/16 tcp -P out none;\n"
        "spdadd 10.0.0.1 10.1.2.3 any -P out discard;\n"
        "spdadd 10.0.0.1 10.1.2.3 udp -P in discard;\n"
        "spdadd 10.0.0.1 10.1.2.4 tcp -P out none;\n",
        "f.spd",
    )
    [w] = p.warnings
    assert (w.line, w.col) == (2, 1)
    assert "f.spd:1:1" in w.message and "discard here, none/bypass there" in w.message


def test_explicit_different_priorities_silence_the_overlap_warning() -> None:
    p = load_text(
        "spdadd 10.0.0.0/8 10.1.0.0/16 any -P out prio 1 none;\n"
        "spdadd 10.0.0.1 10.1.2.3 tcp -P out prio 2 discard;\n"
    )
    assert not p.warnings


def test_macro_string_keeps_a_quoted_psk() -> None:
    p = load_text('k = "a-long-enough-pre-shared-key";\nconnection c between all and all'
                  " auth psk $k;")  # fmt: skip
    assert p.connections[0].auth.psk is not None and p.has_literal_keys


def test_unexpected_internal_failure_still_surfaces_as_spd_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ipsecd.spd.loader as loader

    def boom(*_args: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(loader, "validate", boom)
    with pytest.raises(SpdError) as info:
        load_text("bypass udp port 53;", "x.spd")
    assert str(info.value).startswith("x.spd: error: internal error while reading the SPD")
    assert isinstance(info.value.__cause__, RuntimeError)


def test_inline_connection_clauses_after_bare_traffic() -> None:
    c = load_text("connection c between all and all traffic esp lifetime 2h dpd 10s;").connections[
        0
    ]
    assert c.traffic[0].proto == 0 and c.child_lifetime == 7200 and c.dpd == 10


def test_unused_groups_and_proposals_warn() -> None:
    p = load_text("nodes spare name z;\nproposal esp idle aes256gcm16;\n", "u.spd")
    assert [(w.line, w.message) for w in p.warnings] == [
        (1, "node group 'spare' is never used"),
        (2, "esp proposal 'idle' is never used"),
    ]


DESIGN_EXAMPLE = """
defaults { policy discard; esp_trans_deflev require; dfbit copy; ecn on; log unmatched; }
proposal ike strong aes256gcm16-prfsha384-ecp384, aes256-sha256-modp3072;
proposal esp strong aes256gcm16, aes256-sha256;
nodes workers label role=worker;
nodes db address 10.20.0.0/24;
connection mesh    { between all and all; mode transport; auth certificate;
                     ike strong lifetime 8h; esp strong lifetime 1h; dpd 30s; }
connection db-link { between workers and db; traffic tcp port 5432; mode tunnel;
                     auth psk secret:db-psk; }
bypass udp port 53;
spdadd 10.30.0.0/24 10.40.0.0/24 any -P out ipsec esp/tunnel/192.0.2.1-192.0.2.2/require;
"""


def test_the_design_card_example_is_valid() -> None:
    p = load_text(DESIGN_EXAMPLE, "design.spd")
    assert [c.name for c in p.connections] == ["mesh", "db-link"]
    assert p.defaults.def_policy == "discard" and p.defaults.log_unmatched
    assert len(p.spd) == 1 and len(p.rules) == 1


def test_native_manual_sa_matches_setkey_add() -> None:
    key = "0x" + "cd" * 36
    native = load_text(
        f"sa esp 0x1000 from 192.0.2.1 to 192.0.2.2 {{ mode tunnel; enc aes-gcm-16 {key};"
        " reqid 5; replay 64; lifetime 1h soft 50m; bytes 1000 soft 900; pad random-pad; }"
    ).sas[0]
    setkey = load_text(
        "add 192.0.2.1 192.0.2.2 esp 0x1000 -m tunnel -u 5 -r 64 -lh 3600 -ls 3000"
        f" -bh 1000 -bs 900 -f random-pad -E aes-gcm-16 {key};"
    ).sas[0]
    assert native == setkey


def test_native_sa_errors() -> None:
    with pytest.raises(SpdError, match="is given twice"):
        load_text("sa ah 0x1001 from 192.0.2.1 to 192.0.2.2 auth hmac-sha2-256 secret:a"
                  " auth hmac-sha2-256 secret:b;")  # fmt: skip
    with pytest.raises(SpdError, match="soft lifetime 7200s is longer than hard"):
        load_text("sa ah 0x1001 from 192.0.2.1 to 192.0.2.2 auth hmac-sha2-256 secret:a"
                  " lifetime 1h soft 2h;")  # fmt: skip
