"""The codec and crypto against real strongSwan 5.9.8 datagrams.

Fixtures: tests/data/ike/captures/ (written by the interop side with regenerate.py; see
its README): each ``.bin`` is one IKE message as charon sent it, ``.inner`` the
plaintext of its SK payload, ``<case>.keys.json`` the keys charon logged.  Checked here:

* every datagram parses and rebuilds byte-exact;
* SKEYSEED and the seven IKE SA keys we derive from the logged DH secret and the nonces
  and SPIs of the captured IKE_SA_INIT equal charon's;
* decrypt_sk with our keys yields charon's plaintext, whose payloads rebuild byte-exact;
  encrypt_sk with the captured IV reproduces charon's AEAD messages exactly;
* the PSK AUTH payloads verify (RFC 7296 2.15) and the wrong-PSK one does not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from ipsecd.ike.codec import (
    AuthPayload,
    IdiPayload,
    IdrPayload,
    KePayload,
    Message,
    NoncePayload,
    NotifyPayload,
    Payload,
    SaPayload,
    build_message,
    build_payloads,
    decrypt_sk,
    encrypt_sk,
    parse_message,
    payload_body,
)
from ipsecd.ike.constants import (
    DhGroup,
    EncrId,
    ExchangeType,
    IntegId,
    NotifyType,
    PayloadType,
    TransformType,
)
from ipsecd.ike.crypto import IkeKeys, IkeSuite, derive_ike_keys, maced_id, prf, psk_auth_data

CAPTURES = Path(__file__).resolve().parents[2] / "data" / "ike" / "captures"
PSK = b"ipsecd-capture-psk-0123456789"  # README: the PSK used for the captures
CASES = ("gcm256-ecp384", "cbc256-sha256-modp2048", "chacha20-x25519", "gcm128-ecp256-ipv6")
ALL_CASES = (*CASES, "invalid-ke", "no-proposal", "wrong-psk")


def _bins(case: str | None = None) -> list[Path]:
    files = sorted(CAPTURES.glob(f"{case or ''}*.bin"))
    if not files:
        pytest.fail(
            f"no strongSwan captures in {CAPTURES} (case {case!r}); regenerate them as root: "
            ".venv/bin/python tests/data/ike/captures/regenerate.py"
        )
    return files


def test_every_capture_case_is_present() -> None:
    for case in ALL_CASES:
        assert _bins(case), case


# a missing folder yields one failing case (never an empty, silently skipped set)
_ALL_BINS = sorted(CAPTURES.glob("*.bin")) or [CAPTURES / "MISSING.bin"]


@pytest.mark.parametrize("path", _ALL_BINS, ids=lambda p: p.name)
def test_capture_roundtrips_byte_exact(path: Path) -> None:
    if not path.exists():
        _bins()  # fails with the regeneration hint
    data = path.read_bytes()
    msg = parse_message(data)
    assert build_message(msg) == data
    assert msg.major_version == 2
    # re-parsing the rebuilt bytes gives the same value (dataclass equality)
    assert parse_message(build_message(msg)) == msg


@dataclass
class _Exchange:
    init_req: bytes
    init_resp: bytes
    keys: dict[str, str]
    spi_i: bytes
    spi_r: bytes


def _case(case: str) -> _Exchange:
    files = _bins(case)
    inits = [f for f in files if "ike_sa_init" in f.name]
    reqs = [f for f in inits if f.name.endswith("-req.bin")]
    resps = [f for f in inits if f.name.endswith("-resp.bin")]
    info = json.loads((CAPTURES / f"{case}.keys.json").read_text())
    return _Exchange(
        reqs[-1].read_bytes(),
        resps[-1].read_bytes(),
        info["key_sets"][-1],
        bytes.fromhex(info["spi_i"]),
        bytes.fromhex(info["spi_r"]),
    )


def _suite_from_response(resp: Message) -> IkeSuite:
    sa = resp.get(SaPayload)
    assert sa is not None and len(sa.proposals) == 1
    prop = sa.proposals[0]
    (encr,) = prop.transforms_of(TransformType.ENCR)
    (prf_t,) = prop.transforms_of(TransformType.PRF)
    (dh,) = prop.transforms_of(TransformType.DH)
    integ = prop.transforms_of(TransformType.INTEG)
    return IkeSuite(
        encr.transform_id,
        encr.key_length,
        prf_t.transform_id,
        integ[0].transform_id if integ else IntegId.NONE,
        dh.transform_id,
    )


def _nonce(msg: Message) -> bytes:
    n = msg.get(NoncePayload)
    assert n is not None
    return n.data


@pytest.mark.parametrize("case", [*CASES, "invalid-ke", "wrong-psk"])
def test_ike_key_derivation_matches_charon(case: str) -> None:
    ex = _case(case)
    req, resp = parse_message(ex.init_req), parse_message(ex.init_resp)
    suite = _suite_from_response(resp)
    assert (resp.spi_i, resp.spi_r) == (ex.spi_i, ex.spi_r)
    shared = bytes.fromhex(ex.keys["dh_shared_secret"])
    ni, nr = _nonce(req), _nonce(resp)
    # RFC 7296 2.14
    assert prf(suite.prf_id, ni + nr, shared).hex() == ex.keys["skeyseed"]
    keys = derive_ike_keys(suite, shared, ni, nr, ex.spi_i, ex.spi_r)
    for name in ("sk_d", "sk_ai", "sk_ar", "sk_ei", "sk_er", "sk_pi", "sk_pr"):
        assert getattr(keys, name).hex() == ex.keys.get(name, ""), name


@pytest.mark.parametrize("case", [*CASES, "invalid-ke", "wrong-psk"])
def test_decrypt_reencrypt_and_psk_auth(case: str) -> None:
    ex = _case(case)
    req, resp = parse_message(ex.init_req), parse_message(ex.init_resp)
    suite = _suite_from_response(resp)
    ni, nr = _nonce(req), _nonce(resp)
    keys = derive_ike_keys(
        suite, bytes.fromhex(ex.keys["dh_shared_secret"]), ni, nr, ex.spi_i, ex.spi_r
    )
    decrypted = 0
    for path in _bins(case):
        inner_path = path.with_suffix(".inner")
        if not inner_path.exists():
            continue
        data = path.read_bytes()
        msg = parse_message(data)
        sk = msg.sk
        assert sk is not None, path.name
        cipher = keys.initiator_cipher() if msg.is_initiator else keys.responder_cipher()
        inner = decrypt_sk(data, msg, cipher)
        first, plain = build_payloads(inner)
        assert plain == inner_path.read_bytes(), path.name
        assert first == sk.first_payload
        decrypted += 1
        if cipher.block_size == 1:
            # AEAD: charon pads with nothing, so the same IV reproduces the datagram
            header = Message(msg.spi_i, msg.spi_r, msg.exchange_type, msg.flags, msg.message_id)
            again = encrypt_sk(header, inner, cipher, iv=sk.body[: cipher.iv_size])
            assert again == data, path.name
        if msg.exchange_type == ExchangeType.IKE_AUTH:
            _check_psk_auth(case, msg, inner, keys, suite, ex, ni, nr)
    assert decrypted >= 2


def _check_psk_auth(
    case: str,
    msg: Message,
    inner: tuple[Payload, ...],
    keys: IkeKeys,
    suite: IkeSuite,
    ex: _Exchange,
    ni: bytes,
    nr: bytes,
) -> None:
    auth = next((p for p in inner if isinstance(p, AuthPayload)), None)
    if auth is None:
        # only the wrong-PSK response carries no AUTH: AUTHENTICATION_FAILED instead
        notes = [p for p in inner if isinstance(p, NotifyPayload)]
        assert case == "wrong-psk" and notes[0].notify_type == NotifyType.AUTHENTICATION_FAILED
        return
    if msg.is_initiator:
        id_payload: IdiPayload | IdrPayload = next(p for p in inner if isinstance(p, IdiPayload))
        sk_p, real_message, peer_nonce = keys.sk_pi, ex.init_req, nr
    else:
        id_payload = next(p for p in inner if isinstance(p, IdrPayload))
        sk_p, real_message, peer_nonce = keys.sk_pr, ex.init_resp, ni
    # RFC 7296 2.15: AUTH = prf(prf(PSK, "Key Pad for IKEv2"), RealMessage | Nonce | MACedID)
    octets = real_message + peer_nonce + maced_id(suite.prf_id, sk_p, payload_body(id_payload))
    expected = psk_auth_data(suite.prf_id, PSK, octets)
    if case == "wrong-psk":
        # the initiator used the real PSK; its AUTH verifies, the responder refused it
        # because the responder was configured with another PSK
        assert msg.is_initiator
    assert auth.data == expected


def test_capture_payload_details() -> None:
    # spot checks that decoding is semantic, not just byte-preserving
    req = parse_message((CAPTURES / "gcm256-ecp384-01-ike_sa_init-req.bin").read_bytes())
    assert req.exchange_type == ExchangeType.IKE_SA_INIT and req.is_initiator
    assert not req.is_response and req.message_id == 0 and req.spi_r == bytes(8)
    ke = req.get(KePayload)
    assert ke is not None and ke.dh_group == DhGroup.ECP_384 and len(ke.data) == 96
    sa = req.get(SaPayload)
    assert sa is not None
    encr = sa.proposals[0].transforms_of(TransformType.ENCR)[0]
    assert encr.transform_id == EncrId.AES_GCM_16 and encr.key_length == 256
    nat = {n.notify_type for n in req.notifies()}
    assert NotifyType.NAT_DETECTION_SOURCE_IP in nat
    assert NotifyType.NAT_DETECTION_DESTINATION_IP in nat
    invalid_ke = parse_message((CAPTURES / "invalid-ke-02-ike_sa_init-resp.bin").read_bytes())
    (note,) = invalid_ke.notifies(NotifyType.INVALID_KE_PAYLOAD)
    assert int.from_bytes(note.data, "big") == DhGroup.ECP_384  # RFC 7296 1.3: group
    no_prop = parse_message((CAPTURES / "no-proposal-02-ike_sa_init-resp.bin").read_bytes())
    assert no_prop.notifies(NotifyType.NO_PROPOSAL_CHOSEN)
    auth = parse_message((CAPTURES / "gcm256-ecp384-03-ike_auth-req.bin").read_bytes())
    assert auth.sk is not None and auth.sk.first_payload == PayloadType.IDi
