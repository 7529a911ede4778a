"""Certificate authentication in IKE_AUTH (issue #11): RFC 7427 signatures, CERT and
CERTREQ, the peer's chain, validity, revocation and identity, with test CAs; two of our
engines on the simulated network (harness.py)."""

from __future__ import annotations

import dataclasses

import pytest

from ipsecd.ike import IkeSaEstablished, IkeSaFailed, IkeState, codec
from ipsecd.ike.auth import Trust
from ipsecd.ike.codec import CertPayload, CertReqPayload, Payload, parse_message
from ipsecd.ike.config import IkeConfig, SendCert
from ipsecd.ike.constants import AuthMethod, ExchangeType, NotifyType
from ipsecd.ike.pki import LocalCredentials, TrustStore
from ipsecd.ike.sa import IkeSa
from ipsecd.ike.tasks import ike_init
from tests.support import pki
from tests.support.pki import DAY, NOW

from .harness import I_ADDR, R_ADDR, Harness, Network, events_of, make_configs

ROOT = pki.ca("Cluster CA")
INTER = pki.ca("Cluster Intermediate", issuer=ROOT, key="p384")


def creds(issued: pki.Issued, *chain: pki.Issued) -> LocalCredentials:
    return LocalCredentials((issued.cert, *(c.cert for c in chain)), issued.key)  # type: ignore[arg-type]


def trust(*anchors: pki.Issued, crls: tuple[object, ...] = (), at: float = NOW) -> Trust:
    return Trust(TrustStore(tuple(a.cert for a in anchors), crls), clock=lambda: at)  # type: ignore[arg-type]


def node(cn: str, ip: str, *, issuer: pki.Issued = ROOT, **kw: object) -> pki.Issued:
    return pki.end_entity(issuer, cn, ips=(ip,), **kw)  # type: ignore[arg-type]


I_CERT = node("node-i", I_ADDR[0])
R_CERT = node("node-r", R_ADDR[0])


def configs(
    i: pki.Issued = I_CERT,
    r: pki.Issued = R_CERT,
    *,
    i_chain: tuple[pki.Issued, ...] = (),
    r_chain: tuple[pki.Issued, ...] = (),
    i_trust: Trust | None = None,
    r_trust: Trust | None = None,
    **changes: object,
) -> tuple[IkeConfig, IkeConfig]:
    ci, cr = make_configs()
    ci = dataclasses.replace(
        ci, psk=b"", credentials=creds(i, *i_chain), trust=i_trust or trust(ROOT), **changes
    )  # type: ignore[arg-type]
    cr = dataclasses.replace(
        cr, psk=b"", credentials=creds(r, *r_chain), trust=r_trust or trust(ROOT), **changes
    )  # type: ignore[arg-type]
    return ci, cr


def run(ci: IkeConfig, cr: IkeConfig, network: Network | None = None) -> Harness:
    h = Harness(ci, [cr], network=network or Network())
    h.start()
    h.run()
    return h


def established(h: Harness) -> tuple[IkeSaEstablished, IkeSaEstablished]:
    assert h.initiator.state == IkeState.ESTABLISHED, events_of(h.events_i, IkeSaFailed)
    assert h.responder is not None and h.responder.state == IkeState.ESTABLISHED
    return events_of(h.events_i, IkeSaEstablished)[0], events_of(h.events_r, IkeSaEstablished)[0]


def failed(h: Harness) -> tuple[str, str]:
    """(initiator's reason, responder's reason) of a refused IKE_AUTH."""
    fi = events_of(h.events_i, IkeSaFailed)
    fr = events_of(h.events_r, IkeSaFailed)
    assert fi and fi[0].notify == NotifyType.AUTHENTICATION_FAILED, fi
    assert not events_of(h.events_i, IkeSaEstablished) or h.initiator.state == IkeState.FAILED
    return fi[0].reason, fr[0].reason if fr else ""


def inner_of(h: Harness, sender: str, exchange: int) -> list[Payload]:
    """The decrypted payloads of the first message ``sender`` sent in ``exchange``."""
    sa = h.initiator if sender == "i" else h.responder
    assert sa is not None and sa.keys is not None
    for pkt in h.wire:
        if pkt.sender != sender:
            continue
        msg = parse_message(pkt.data[4:] if pkt.data[:4] == b"\0\0\0\0" else pkt.data)
        if msg.exchange_type == exchange and msg.sk is not None:
            return list(codec.decrypt_sk(pkt.data, msg, sa.keys.out_cipher))
    raise AssertionError(f"no {exchange} message from {sender}")


# ------------------------------------------------------------------ good chains


@pytest.mark.parametrize(
    ("kind", "scheme"),
    [
        ("p256", "ecdsa-sha256"),
        ("p384", "ecdsa-sha384"),
        ("p521", "ecdsa-sha512"),
        ("rsa2048", "rsa-pss-sha256"),
        ("ed25519", "ed25519"),
    ],
)
def test_each_key_type_authenticates_both_ways(kind: str, scheme: str) -> None:
    i = node(f"i-{kind}", I_ADDR[0], key=kind)
    r = node(f"r-{kind}", R_ADDR[0], key=kind)
    ei, er = established(run(*configs(i, r)))
    assert ei.peer_auth == er.peer_auth == scheme
    assert ei.peer_certificate == r.subject and er.peer_certificate == i.subject


def test_a_chain_through_an_intermediate_is_sent_and_checked() -> None:
    i = node("node-i2", I_ADDR[0], issuer=INTER)
    r = node("node-r2", R_ADDR[0], issuer=INTER, key="rsa3072")
    h = run(*configs(i, r, i_chain=(INTER,), r_chain=(INTER,)))
    established(h)
    auth_request = inner_of(h, "i", ExchangeType.IKE_AUTH)
    certs = [p for p in auth_request if isinstance(p, CertPayload)]
    # RFC 7296 3.6: the first CERT holds the key that signed; then the intermediate
    assert [c.data for c in certs] == [
        i.cert.public_bytes(pki.serialization.Encoding.DER),
        INTER.cert.public_bytes(pki.serialization.Encoding.DER),
    ]
    # the request also carries our CERTREQ naming the root (RFC 7296 3.7)
    (req,) = [p for p in auth_request if isinstance(p, CertReqPayload)]
    assert req.data == TrustStore((ROOT.cert,)).certreq_data()


def test_ike_sa_init_carries_hash_algorithms_and_the_responders_certreq() -> None:
    h = run(*configs())
    established(h)
    init_i = parse_message(h.wire[0].data)
    init_r = parse_message(next(p.data for p in h.wire if p.sender == "r"))
    for msg in (init_i, init_r):
        (sha,) = msg.notifies(NotifyType.SIGNATURE_HASH_ALGORITHMS)
        assert sha.data.hex() == "0002000300040005"  # SHA2-256/384/512, Identity
    assert init_r.get(CertReqPayload) is not None and init_i.get(CertReqPayload) is None


def test_psk_connections_send_no_signature_notify() -> None:
    ci, cr = make_configs()
    h = run(ci, cr)
    established(h)
    assert not parse_message(h.wire[0].data).notifies(NotifyType.SIGNATURE_HASH_ALGORITHMS)


def test_mixed_certificate_one_way_psk_the_other() -> None:
    ci, cr = make_configs()
    ci = dataclasses.replace(ci, credentials=creds(I_CERT))  # we sign, the peer uses the PSK
    cr = dataclasses.replace(cr, trust=trust(ROOT))  # it checks our certificate
    ei, er = established(run(ci, cr))
    assert ei.peer_auth == "psk" and er.peer_auth == "ecdsa-sha256"


# ------------------------------------------------------------------ refusals


def _responder_refused(ci: IkeConfig, cr: IkeConfig, expected: str) -> None:
    h = run(ci, cr)
    reason_i, reason_r = failed(h)
    assert expected in reason_r, reason_r
    assert "AUTHENTICATION_FAILED" in reason_i  # told by the responder (RFC 7296 2.21.2)
    assert h.responder is not None and h.responder.state == IkeState.FAILED


def _initiator_refused(ci: IkeConfig, cr: IkeConfig, expected: str) -> None:
    h = run(ci, cr)
    reason_i, _ = failed(h)
    assert expected in reason_i, reason_i


def test_expired_certificate_is_refused() -> None:
    old = node("node-r-old", R_ADDR[0], not_before=NOW - 400 * DAY, not_after=NOW - DAY)
    _initiator_refused(*configs(r=old), "(expired)")


def test_not_yet_valid_certificate_is_refused() -> None:
    new = node("node-i-new", I_ADDR[0], not_before=NOW + DAY, not_after=NOW + 400 * DAY)
    _responder_refused(*configs(i=new), "(not_yet_valid)")


def test_wrong_subject_alt_name_is_refused() -> None:
    other = node("node-i-wrongip", "192.0.2.99")  # a cluster certificate, another node's IP
    _responder_refused(*configs(i=other), "does not name the identity 192.0.2.1")


def test_revoked_certificate_is_refused_and_a_refreshed_crl_takes_effect() -> None:
    ci, cr = configs()
    shared = trust(ROOT)
    cr = dataclasses.replace(cr, trust=shared)
    established(run(ci, cr))
    # the CA revokes the initiator; the agent swaps the store in place (no new config)
    shared.update(shared.store.with_crls([pki.crl(ROOT, [I_CERT.cert.serial_number])]))
    _responder_refused(ci, cr, "(revoked)")


def test_unknown_ca_is_refused() -> None:
    other_root = pki.ca("Some Other CA")
    stranger = node("stranger", I_ADDR[0], issuer=other_root)
    _responder_refused(*configs(i=stranger), "(unknown_ca)")


def test_weak_key_is_refused() -> None:
    weak = node("node-r-1024", R_ADDR[0], key="rsa1024")
    ci, cr = make_configs()
    ci = dataclasses.replace(ci, psk=b"x" * 16, trust=trust(ROOT))
    # the responder signs with an RSA-1024 certificate (LocalCredentials would refuse to
    # load it, so the configuration is built around that check)
    cr = dataclasses.replace(cr, psk=b"x" * 16)
    object.__setattr__(cr, "credentials", object.__new__(LocalCredentials))
    object.__setattr__(cr.credentials, "chain", (weak.cert,))
    object.__setattr__(cr.credentials, "key", weak.key)
    _initiator_refused(ci, cr, "weak_key")


def test_a_psk_where_a_certificate_is_required_is_refused() -> None:
    ci, cr = make_configs()
    cr = dataclasses.replace(cr, trust=trust(ROOT))
    _responder_refused(ci, cr, "requires a certificate from its CA")


def test_a_certificate_where_a_psk_is_expected_is_refused() -> None:
    ci, cr = make_configs()
    # a PSK-only responder announces no signature hashes: our initiator needs the older
    # methods to sign at all (without them it fails before sending: see below)
    ci = dataclasses.replace(ci, credentials=creds(I_CERT), allow_legacy_auth=True)
    _responder_refused(ci, cr, "authenticates it with a pre-shared key")
    ci = dataclasses.replace(ci, allow_legacy_auth=False)
    assert "did not send SIGNATURE_HASH_ALGORITHMS" in failed(run(ci, cr))[0]


def test_send_cert_never_leaves_the_peer_without_a_certificate() -> None:
    ci, cr = configs()
    ci = dataclasses.replace(ci, send_cert=SendCert.NEVER)
    _responder_refused(ci, cr, "sent no certificate")


def test_if_asked_sends_nothing_to_a_peer_that_asks_for_nothing() -> None:
    ci, cr = make_configs()
    ci = dataclasses.replace(
        ci, credentials=creds(I_CERT), send_cert=SendCert.IF_ASKED, allow_legacy_auth=True
    )
    h = run(ci, cr)  # the responder uses PSKs both ways: no CERTREQ, so no CERT
    failed(h)
    request = inner_of(h, "i", ExchangeType.IKE_AUTH)
    assert not any(isinstance(p, CertPayload) for p in request)


# ------------------------------------------------------------------ older methods


def old_responder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Our responders stop announcing SIGNATURE_HASH_ALGORITHMS, as a peer older than
    RFC 7427 would (rewriting the datagram instead would break the signed octets)."""
    original = ike_init.signature_notifies

    def notifies(sa: IkeSa) -> list[Payload]:
        return original(sa) if sa.initiator else []

    monkeypatch.setattr(ike_init, "signature_notifies", notifies)


def test_older_methods_only_when_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    # the responder does not announce hashes: our initiator must not sign with
    # method 14 (RFC 7427 4), and without 'legacy' it cannot sign at all
    old_responder(monkeypatch)
    ci, cr = configs()
    h = run(ci, cr)
    reason_i = events_of(h.events_i, IkeSaFailed)[0].reason
    assert "did not send SIGNATURE_HASH_ALGORITHMS" in reason_i
    ci, cr = configs(allow_legacy_auth=True)
    h = run(ci, cr)
    ei, er = established(h)
    assert er.peer_auth == "ecdsa-256-sha256 (AUTH method 9)"
    assert ei.peer_auth == "ecdsa-sha256"  # the responder saw our hashes: method 14
    request = inner_of(h, "i", ExchangeType.IKE_AUTH)
    auth = next(p for p in request if isinstance(p, codec.AuthPayload))
    assert auth.method == AuthMethod.ECDSA_SHA256_P256


# ------------------------------------------------------------------ fragmentation


def test_rsa_chains_go_in_fragments_under_a_small_mtu() -> None:
    i = node("node-i-rsa", I_ADDR[0], issuer=INTER, key="rsa3072")
    r = node("node-r-rsa", R_ADDR[0], issuer=INTER, key="rsa3072")
    ci, cr = configs(i, r, i_chain=(INTER,), r_chain=(INTER,), fragment_size=576)
    h = run(ci, cr)
    established(h)
    assert max(len(p.data) for p in h.wire) <= 576 - 28
    skf = [p for p in h.wire if parse_message(p.data).skf is not None]
    assert {p.sender for p in skf} == {"i", "r"} and len(skf) >= 6


def test_distinguished_name_identities_match_whatever_their_string_types() -> None:
    # IDs by DN (SPD: id "CN=..., O=..."): our DN text becomes UTF8String values, the
    # peer's certificate may use PrintableString; the same name either way
    from ipsecd.ike.config import Identity
    from ipsecd.ike.pki import identity_of

    ci, cr = configs()
    spaced = R_CERT.subject.replace(",", ", ")  # as people write DNs
    assert spaced != R_CERT.subject
    ci = dataclasses.replace(ci, remote_id=Identity.parse(f"dn:{spaced}"))
    cr = dataclasses.replace(cr, local_id=identity_of(R_CERT.cert))
    ei, _ = established(run(ci, cr))
    assert ei.remote_id.matches(Identity.parse(f"dn:{R_CERT.subject}"))
    other = dataclasses.replace(ci, remote_id=Identity.parse("dn:CN=node-x, O=ipsecd tests"))
    reason_i, _ = failed(run(other, cr))
    assert "is not dn:CN=node-x,O=ipsecd tests" in reason_i
