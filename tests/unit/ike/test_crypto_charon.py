"""CHILD_SA keys (RFC 7296 2.17) and NAT-D hashes (2.23) against strongSwan's own.

Fixtures: tests/data/ike/fragments/ -- charon logged (chd = 4) the prf+ seed and the
keys of two CHILD_SAs per case: the first from IKE_AUTH (seed Ni | Nr), the second from
a CREATE_CHILD_SA with PFS (seed g^ir | Ni | Nr); and (ike = 4) its NAT-D hash inputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ipsecd.ike.codec import (
    FragmentCollector,
    KePayload,
    NoncePayload,
    Payload,
    SaPayload,
    decrypt_sk,
    decrypt_skf,
    parse_message,
)
from ipsecd.ike.constants import EncrId, IntegId, TransformType
from ipsecd.ike.crypto import (
    IkeKeys,
    IkeSuite,
    derive_child_keys,
    derive_ike_keys,
    dh_public_length,
    nat_detection_hash,
)

FRAGMENTS = Path(__file__).resolve().parents[2] / "data" / "ike" / "fragments"
CASES = {
    # case: (ESP encryption, key bits, ESP integrity)
    "frag-gcm256-ecp384": (EncrId.AES_GCM_16, 256, IntegId.NONE),
    "frag-cbc256-sha256-ecp256": (EncrId.AES_CBC, 256, IntegId.HMAC_SHA2_256_128),
}


def _exchanges(
    case: str,
) -> tuple[dict[str, object], IkeKeys, dict[tuple[int, bool], tuple[Payload, ...]]]:
    """Keys of the case and the clear/decrypted payloads of every message."""
    files = sorted(FRAGMENTS.glob(f"{case}-*.bin"))
    if not files:
        pytest.fail(
            f"no captures for {case} in {FRAGMENTS}; regenerate them as root: "
            ".venv/bin/python tests/data/ike/fragments/regenerate.py"
        )
    info = json.loads((FRAGMENTS / f"{case}.keys.json").read_text())
    req, resp = (parse_message(f.read_bytes()) for f in files[:2])
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
    ni, nr = req.get(NoncePayload), resp.get(NoncePayload)
    assert ni is not None and nr is not None
    keys = derive_ike_keys(
        suite,
        bytes.fromhex(info["key_sets"][-1]["dh_shared_secret"]),
        ni.data,
        nr.data,
        bytes.fromhex(info["spi_i"]),
        bytes.fromhex(info["spi_r"]),
    )
    payloads: dict[tuple[int, bool], tuple[Payload, ...]] = {
        (0, False): req.payloads,
        (0, True): resp.payloads,
    }
    collectors: dict[tuple[int, bool], FragmentCollector] = {}
    for f in files[2:]:
        data = f.read_bytes()
        msg = parse_message(data)
        cipher = keys.initiator_cipher() if msg.is_initiator else keys.responder_cipher()
        key = (msg.message_id, msg.is_response)
        if msg.skf is not None:
            inner = collectors.setdefault(key, FragmentCollector()).add(
                msg.skf, decrypt_skf(data, msg, cipher)
            )
            if inner is not None:
                payloads[key] = inner
        else:
            payloads[key] = decrypt_sk(data, msg, cipher)
    return info, keys, payloads


def _nonce(payloads: tuple[Payload, ...]) -> bytes:
    n = next(p for p in payloads if isinstance(p, NoncePayload))
    return n.data


@pytest.mark.parametrize("case", sorted(CASES))
def test_child_keys_match_charon_with_and_without_pfs(case: str) -> None:
    info, keys, payloads = _exchanges(case)
    encr_id, bits, integ_id = CASES[case]
    first, second = info["child_key_sets"]  # type: ignore[misc]
    prf_id = keys.suite.prf_id
    # first CHILD_SA (IKE_AUTH): KEYMAT = prf+(SK_d, Ni | Nr), nonces of IKE_SA_INIT
    ni, nr = _nonce(payloads[(0, False)]), _nonce(payloads[(0, True)])
    assert first["seed"] == (ni + nr).hex()
    got = derive_child_keys(
        prf_id, keys.sk_d, ni, nr, encr_id=encr_id, encr_key_bits=bits, integ_id=integ_id
    )
    assert got.encr_i.hex() == first["encr_i"]
    assert got.encr_r.hex() == first["encr_r"]
    assert got.integ_i.hex() == first.get("integ_i", "")
    assert got.integ_r.hex() == first.get("integ_r", "")
    # second CHILD_SA (CREATE_CHILD_SA with KE): prf+(SK_d, g^ir (new) | Ni | Nr)
    ccsa = [
        k for k, v in payloads.items() if k[0] >= 2 and any(isinstance(p, KePayload) for p in v)
    ]
    assert len(ccsa) == 2, "expected a CREATE_CHILD_SA request and response with KE"
    (req_key,) = [k for k in ccsa if not k[1]]
    (resp_key,) = [k for k in ccsa if k[1]]
    ni2, nr2 = _nonce(payloads[req_key]), _nonce(payloads[resp_key])
    dh = bytes.fromhex(second["dh_secret"])
    ke = next(p for p in payloads[req_key] if isinstance(p, KePayload))
    assert len(ke.data) == dh_public_length(ke.dh_group)  # RFC 5903 7 encoding
    assert second["seed"] == (dh + ni2 + nr2).hex()
    got2 = derive_child_keys(
        prf_id,
        keys.sk_d,
        ni2,
        nr2,
        encr_id=encr_id,
        encr_key_bits=bits,
        integ_id=integ_id,
        shared_secret=dh,
    )
    assert got2.encr_i.hex() == second["encr_i"]
    assert got2.encr_r.hex() == second["encr_r"]
    assert got2.integ_i.hex() == second.get("integ_i", "")
    assert got2.integ_r.hex() == second.get("integ_r", "")
    assert got2 != got


@pytest.mark.parametrize("case", sorted(CASES))
def test_nat_detection_hash_matches_charon(case: str) -> None:
    info = json.loads((FRAGMENTS / f"{case}.keys.json").read_text())
    pairs = info["natd"]
    assert len(pairs) >= 2
    for pair in pairs:
        chunk = bytes.fromhex(pair["chunk"])
        spi_i, spi_r, rest = chunk[:8], chunk[8:16], chunk[16:]
        address, port = rest[:-2], int.from_bytes(rest[-2:], "big")
        assert nat_detection_hash(spi_i, spi_r, address, port).hex() == pair["hash"]
