"""RFC 7383 fragments: our SKF codec against strongSwan's fragmented IKE_AUTH.

Fixtures: tests/data/ike/fragments/ (regenerate.py there; README lists the cases).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ipsecd.ike.codec import (
    AuthPayload,
    FragmentCollector,
    IdiPayload,
    IdrPayload,
    Message,
    NoncePayload,
    Payload,
    SaPayload,
    TsiPayload,
    build_message,
    decrypt_sk,
    decrypt_skf,
    encrypt_skf,
    parse_message,
    payload_body,
)
from ipsecd.ike.constants import ExchangeType, IntegId, PayloadType, TransformType
from ipsecd.ike.crypto import IkeKeys, IkeSuite, derive_ike_keys, maced_id, psk_auth_data

FRAGMENTS = Path(__file__).resolve().parents[2] / "data" / "ike" / "fragments"
CASES = ("frag-gcm256-ecp384", "frag-cbc256-sha256-ecp256")


def _load(case: str) -> tuple[list[tuple[str, bytes]], dict[str, object]]:
    files = sorted(FRAGMENTS.glob(f"{case}-*.bin"))
    if not files:
        pytest.fail(
            f"no fragment captures for {case} in {FRAGMENTS}; regenerate them as root: "
            ".venv/bin/python tests/data/ike/fragments/regenerate.py"
        )
    info = json.loads((FRAGMENTS / f"{case}.keys.json").read_text())
    return [(f.name, f.read_bytes()) for f in files], info


def _keys(msgs: list[tuple[str, bytes]], info: dict[str, object]) -> tuple[IkeKeys, bytes, bytes]:
    req, resp = parse_message(msgs[0][1]), parse_message(msgs[1][1])
    assert req.exchange_type == resp.exchange_type == ExchangeType.IKE_SA_INIT
    sa = resp.get(SaPayload)
    assert sa is not None
    prop = sa.proposals[0]
    encr = prop.transforms_of(TransformType.ENCR)[0]
    integ = prop.transforms_of(TransformType.INTEG)
    suite = IkeSuite(
        encr.transform_id,
        encr.key_length,
        prop.transforms_of(TransformType.PRF)[0].transform_id,
        integ[0].transform_id if integ else IntegId.NONE,
        prop.transforms_of(TransformType.DH)[0].transform_id,
    )
    key_set = info["key_sets"][-1]  # type: ignore[index]
    ni, nr = req.get(NoncePayload), resp.get(NoncePayload)
    assert ni is not None and nr is not None
    keys = derive_ike_keys(
        suite,
        bytes.fromhex(key_set["dh_shared_secret"]),
        ni.data,
        nr.data,
        bytes.fromhex(str(info["spi_i"])),
        bytes.fromhex(str(info["spi_r"])),
    )
    assert keys.sk_ei.hex() == key_set["sk_ei"] and keys.sk_er.hex() == key_set["sk_er"]
    return keys, ni.data, nr.data


@pytest.mark.parametrize("case", CASES)
def test_strongswan_fragments_reassemble_and_authenticate(case: str) -> None:
    msgs, info = _load(case)
    keys, ni, nr = _keys(msgs, info)
    psk = str(info["psk"]).encode()
    collectors: dict[tuple[int, bool], FragmentCollector] = {}
    complete: dict[bool, tuple[Payload, ...]] = {}
    fragments = 0
    for name, data in msgs[2:]:
        msg = parse_message(data)
        assert build_message(msg) == data, name
        cipher = keys.initiator_cipher() if msg.is_initiator else keys.responder_cipher()
        skf = msg.skf
        if skf is None:
            assert msg.exchange_type == ExchangeType.INFORMATIONAL
            decrypt_sk(data, msg, cipher)
            continue
        fragments += 1
        chunk = decrypt_skf(data, msg, cipher)
        # RFC 7383 2.5: only fragment 1 carries the first inner payload type
        assert (skf.first_payload != PayloadType.NONE) == (skf.fragment_number == 1)
        if cipher.block_size == 1:
            # AEAD without padding: resealing with charon's IV reproduces its bytes,
            # proving our SKF associated data (IKE header + SKF header) is the same
            prefix = data[: len(data) - len(skf.body)]
            assert cipher.seal(prefix, chunk, iv=skf.body[: cipher.iv_size]) == skf.body
        result = collectors.setdefault((msg.message_id, msg.is_response), FragmentCollector())
        inner = result.add(skf, chunk)
        if inner is not None and msg.exchange_type == ExchangeType.IKE_AUTH:
            complete[msg.is_initiator] = inner
    assert fragments >= 4 and set(complete) == {True, False}
    # RFC 7296 2.15 over the reassembled IKE_AUTH payloads, both directions
    prf_id = keys.suite.prf_id
    for from_initiator, inner in complete.items():
        auth = next(p for p in inner if isinstance(p, AuthPayload))
        if from_initiator:
            ident: IdiPayload | IdrPayload = next(p for p in inner if isinstance(p, IdiPayload))
            real, nonce, sk_p = msgs[0][1], nr, keys.sk_pi
        else:
            ident = next(p for p in inner if isinstance(p, IdrPayload))
            real, nonce, sk_p = msgs[1][1], ni, keys.sk_pr
        octets = real + nonce + maced_id(prf_id, sk_p, payload_body(ident))
        assert auth.data == psk_auth_data(prf_id, psk, octets)
        assert any(isinstance(p, TsiPayload) for p in inner)


@pytest.mark.parametrize("case", CASES)
def test_our_fragments_of_strongswan_payloads_reassemble(case: str) -> None:
    """Re-fragment charon's reassembled IKE_AUTH request with our encoder at several
    sizes; our own collector gets the same payloads back."""
    msgs, info = _load(case)
    keys, _, _ = _keys(msgs, info)
    cipher = keys.initiator_cipher()
    collector = FragmentCollector()
    inner = None
    first = parse_message(msgs[2][1])
    for _name, data in msgs[2:]:
        msg = parse_message(data)
        if msg.skf is None or msg.is_response or msg.exchange_type != ExchangeType.IKE_AUTH:
            continue
        inner = collector.add(msg.skf, decrypt_skf(data, msg, cipher)) or inner
    assert inner is not None
    header = Message(first.spi_i, first.spi_r, first.exchange_type, first.flags, first.message_id)
    for size in (100, 200, 576, 1280):
        datagrams = encrypt_skf(header, inner, cipher, max_datagram=size)
        assert all(len(d) <= size for d in datagrams)
        again = FragmentCollector()
        result = None
        for d in datagrams:
            m = parse_message(d)
            assert m.skf is not None
            result = again.add(m.skf, decrypt_skf(d, m, cipher))
        assert result == inner
