"""Secrets at rest and what each node receives (controller/secretstore.py,
docs/security.md "Secrets"), over the in-memory store (its contract against real etcd
is tests/integration/controller/test_store_etcd.py)."""

from __future__ import annotations

import ipaddress
import json
import os

import pytest

from controller.errors import InvalidArgument, NotFound, SecretsUnavailable
from controller.keys import Keys
from controller.secretstore import (
    Envelope,
    EnvelopeError,
    SecretStore,
    node_secrets,
    referenced_secrets,
)
from controller.store import MemoryStore
from ipsecd import spd
from ipsecd.spd.literals import find_literal_keys, replace_literal_keys
from ipsecd.spd.nodes import NodeInfo
from ipsecd.spd.secrets import pair_key, pair_slot, split_pair_slot
from tests.support.aio import run_async

ROOT_PSK = b"mesh-root-psk-0123456789abcdef"
GW_PSK = b"gateway-psk-abcdefghijklmnop"
SA_KEY = bytes(range(20))

MESH = """
nodes workers label role=worker;
peer gw { address 203.0.113.9; id fqdn:gw.example.net; }
connection mesh { between workers and workers; auth psk secret:mesh-psk; }
connection uplink { between workers and gw; auth psk secret:gw-psk; }
sa esp 0x2001 from 192.0.2.1 to 192.0.2.2 enc aes-gcm-16 secret:sa-key;
"""

DIRECTORY = [
    NodeInfo(name, (ipaddress.ip_address(f"192.0.2.{i}"),), {"role": "worker"})
    for i, name in ((1, "a"), (2, "b"), (3, "c"))
]


def _compiled(node: str, text: str = MESH) -> spd.NodeConfig:
    policy = spd.load_text(text, "mesh.spd")
    me = next(n for n in DIRECTORY if n.name == node)
    return spd.compile_node(policy, me, DIRECTORY)


def _values() -> dict[str, bytes]:
    return {"mesh-psk": ROOT_PSK, "gw-psk": GW_PSK, "sa-key": SA_KEY}


# -- per-pair keys ----------------------------------------------------------------------


def test_pair_keys_are_symmetric_and_distinct() -> None:
    ab = pair_key(ROOT_PSK, "mesh-psk", "a", "b")
    assert ab == pair_key(ROOT_PSK, "mesh-psk", "b", "a")  # both ends derive the same
    assert len(ab) == 32 and ab != ROOT_PSK and ROOT_PSK not in ab
    others = {
        pair_key(ROOT_PSK, "mesh-psk", "a", "c"),
        pair_key(ROOT_PSK, "mesh-psk", "b", "c"),
        pair_key(ROOT_PSK, "other", "a", "b"),  # another connection with the same root
        pair_key(ROOT_PSK + b"x", "mesh-psk", "a", "b"),
    }
    assert ab not in others and len(others) == 4
    assert split_pair_slot(pair_slot("mesh-psk", "b")) == ("mesh-psk", "b")
    assert split_pair_slot("mesh-psk") is None


def test_a_node_receives_only_its_own_pairs_never_a_root() -> None:
    got = node_secrets(_compiled("a"), _values())
    assert set(got) == {"mesh-psk@b", "mesh-psk@c", "gw-psk", "sa-key"}
    assert got["mesh-psk@b"] == pair_key(ROOT_PSK, "mesh-psk", "a", "b")
    assert ROOT_PSK not in got.values()
    # c is not an end of the manual SA (192.0.2.1 -> .2): no sa-key; no pair a-b
    got_c = node_secrets(_compiled("c"), _values())
    assert set(got_c) == {"mesh-psk@a", "mesh-psk@b", "gw-psk"}
    assert got_c["mesh-psk@a"] == got["mesh-psk@c"]  # one key per pair, both ends
    assert pair_key(ROOT_PSK, "mesh-psk", "a", "b") not in got_c.values()


def test_the_agent_side_uses_the_pair_key_from_either_source() -> None:
    """agent/connections.py: the controller's NAME@PEER value, or (standalone, the
    whole secrets file) the same key derived locally; the external peer gets the root."""
    from agent.connections import ike_config

    cfg = _compiled("a")
    mesh = next(c for c in cfg.connections if c.connection == "mesh" and c.peer == "b")
    uplink = next(c for c in cfg.connections if c.connection == "uplink")
    delivered = node_secrets(cfg, _values())
    from_controller = ike_config(mesh, delivered)
    standalone = ike_config(mesh, _values())
    assert not hasattr(from_controller, "reason") and not hasattr(standalone, "reason")
    assert from_controller.psk == standalone.psk == pair_key(ROOT_PSK, "mesh-psk", "a", "b")
    gw = ike_config(uplink, delivered)
    assert gw.psk == GW_PSK
    # b's agent derives the same key for the pair
    cfg_b = _compiled("b")
    mesh_b = next(c for c in cfg_b.connections if c.connection == "mesh" and c.peer == "a")
    assert ike_config(mesh_b, node_secrets(cfg_b, _values())).psk == from_controller.psk
    # a key of another pair is no use: a lacks b-c's, and says so
    missing = ike_config(mesh, {})
    assert "secret 'mesh-psk' is not available" in missing.reason


def test_referenced_secrets() -> None:
    assert referenced_secrets(spd.load_text(MESH)) == {"mesh-psk", "gw-psk", "sa-key"}


# -- literal keys -----------------------------------------------------------------------

LITERALS = """# two literal keys
connection web {
    between workers and workers;
    auth psk "a literal pre-shared key";
}
nodes workers label role=worker;
sa esp 0x3001 from 192.0.2.1 to 192.0.2.2 enc aes-gcm-16 0x0102030405060708090a0b0c0d0e0f1011121314;
"""


def test_literal_keys_are_found_and_replaced_in_place() -> None:
    found = find_literal_keys(LITERALS, "l.spd")
    assert [(k.line, k.form) for k in found] == [(4, "string"), (7, "hex")]
    assert found[0].value == b"a literal pre-shared key"
    assert "pre-shared" not in repr(found[0]) and "0102" not in repr(found[1])
    out = replace_literal_keys(LITERALS, found, lambda k: f"lit-{k.form}")
    assert out.count("\n") == LITERALS.count("\n")  # line numbers stay
    assert "a literal pre-shared key" not in out and "0102030405" not in out
    assert "    auth psk secret:lit-string;" in out
    assert out.splitlines()[6].endswith("aes-gcm-16 secret:lit-hex;")
    spd.load_text(out, "l.spd", file_mode=0o644)  # no literal left: a 0644 file is fine


# -- the envelope -------------------------------------------------------------------------


def test_envelope_seals_binds_the_name_and_hides_the_key() -> None:
    env = Envelope(os.urandom(32))
    sealed = env.seal(b"/ipsecd/secrets/x", b"value")
    assert env.open(b"/ipsecd/secrets/x", sealed) == b"value"
    assert b"value" not in json.dumps(sealed).encode()
    with pytest.raises(EnvelopeError, match="changed or moved"):
        env.open(b"/ipsecd/secrets/y", sealed)  # copied under another name
    with pytest.raises(EnvelopeError, match="another envelope key"):
        Envelope(os.urandom(32)).open(b"/ipsecd/secrets/x", sealed)
    assert "Envelope(key_id=" in repr(env) and len(repr(env)) < 40
    name = env.literal_name(b"k")
    assert name == env.literal_name(b"k") and name.startswith("lit-") and len(name) == 20
    assert Envelope(os.urandom(32)).literal_name(b"k") != name
    with pytest.raises(EnvelopeError, match="32 bytes"):
        Envelope(b"short")


def test_envelope_file_must_be_private(tmp_path: os.PathLike[str]) -> None:
    from pathlib import Path

    path = Path(tmp_path) / "envelope.key"
    path.write_bytes(os.urandom(32))
    path.chmod(0o644)
    with pytest.raises(EnvelopeError, match="chmod 600"):
        Envelope.from_file(path)
    path.chmod(0o600)
    Envelope.from_file(path)
    with pytest.raises(EnvelopeError, match="init"):
        Envelope.from_file(path.with_name("missing"))


@run_async(10)
async def test_store_set_list_delete_and_nothing_in_clear() -> None:
    mem = MemoryStore()
    keys = Keys()
    store = SecretStore(mem, keys, Envelope(os.urandom(32)))
    assert await store.set("db-psk", b"s3cret-value", author="alice")
    assert not await store.set("db-psk", b"s3cret-value", author="alice")  # unchanged
    assert await store.get_many(["db-psk", "nope"]) == {"db-psk": b"s3cret-value"}
    raw, _ = await mem.get_prefix(keys.root)
    assert raw and all(b"s3cret" not in kv.value for kv in raw)
    (meta,) = await store.list()
    assert (meta.name, meta.size, meta.author, meta.literal) == ("db-psk", 12, "alice", False)
    for bad in ("", "a/b", "-x", "x" * 200, "a@b"):
        with pytest.raises(InvalidArgument, match="bad secret name"):
            await store.set(bad, b"v", author="alice")
    with pytest.raises(InvalidArgument, match="empty"):
        await store.set("e", b"", author="alice")
    await store.delete("db-psk")
    assert await store.get_many(["db-psk"]) == {}
    with pytest.raises(NotFound, match="no secret 'db-psk'"):
        await store.delete("db-psk")
    off = SecretStore(mem, keys, None)
    with pytest.raises(SecretsUnavailable, match="no envelope key"):
        await off.set("x", b"v", author="alice")
    assert await off.intern_literals(LITERALS, "l.spd", author="a") == LITERALS


@run_async(10)
async def test_intern_and_reveal_literals_round_trip() -> None:
    mem = MemoryStore()
    store = SecretStore(mem, Keys(), Envelope(os.urandom(32)))
    stored = await store.intern_literals(LITERALS, "l.spd", author="alice")
    assert "a literal pre-shared key" not in stored and "0x0102" not in stored
    assert stored == await store.intern_literals(LITERALS, "l.spd", author="bob")  # stable
    metas = await store.list()
    assert len(metas) == 2 and all(m.literal for m in metas)
    assert await store.reveal_literals(stored) == LITERALS
