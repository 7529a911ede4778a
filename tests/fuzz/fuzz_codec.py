"""Fuzz target: the IKEv2 codec (RFC 7296 3, ipsecd/ike/codec.py).

    python tests/fuzz/fuzz_codec.py [libFuzzer options] [CORPUS_DIR ...]

The first byte picks what the rest is fed to:

0. ``parse_message``: a whole datagram;
1. ``parse_payloads``: a bare chain, the second byte being the first payload type;
2. ``decrypt_sk`` of a parsed datagram with a fixed key (third suite picked by the
   second byte): the SK framing of a message that is not authentic;
3. ``decrypt_sk`` of an authentic SK payload whose *padded* plaintext is the rest
   (the Pad Length octet included, RFC 7296 3.14), sealed here with that key.

Invariants: only :class:`~ipsecd.ike.errors.IkeError` subclasses escape, and their
texts show no raw bytes; what parses builds again, the result parses to the same
value, and equals the input byte for byte except the reserved fields (RFC 7296 3.2,
3.3.1, 3.3.2, 3.4, 3.5, 3.8, 3.13), which are sent as zero; a parse decodes at most
one element per byte it read (docs/limits.md "IKE"); an authentic SK payload yields
exactly the chain its plaintext holds (or a typed error for its padding or syntax).

Seeds: the strongSwan captures of tests/data/ike/captures (whole datagrams, and the
decrypted inner chains), every payload type built by the codec, and the datagrams of a
run of two of our endpoints.
"""

from __future__ import annotations

import hmac
import ipaddress
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import (
    AESGCM,
    ChaCha20Poly1305,
)

from tests.fuzz.common import REPO, Finding, instrumented, run

with instrumented("ipsecd"):
    from ipsecd.ike import codec
    from ipsecd.ike.constants import (
        EncrId,
        ExchangeType,
        HeaderFlag,
        IntegId,
        PayloadType,
        ProtocolId,
    )
    from ipsecd.ike.crypto import SkCipher
    from ipsecd.ike.errors import IkeError, IkeIntegrityError
    from tests.unit.ike.harness import make_configs
    from tests.unit.ike.pair import Pair

__all__ = ["fuzz_one", "reserved_mask", "seeds"]

CAPTURES = REPO / "tests" / "data" / "ike" / "captures"
CIPHERS = (
    SkCipher(EncrId.AES_GCM_16, 128, IntegId.NONE, bytes(range(20)), b""),
    SkCipher(EncrId.CHACHA20_POLY1305, None, IntegId.NONE, bytes(range(36)), b""),
    SkCipher(EncrId.AES_CBC, 128, IntegId.HMAC_SHA2_256_128, bytes(range(16)), bytes(32)),
)
_SALT = 4  # RFC 5282 4 / RFC 7634 2: the last 4 bytes of an AEAD key


# --------------------------------------------------------------------------- reserved bits


def _chain_mask(data: bytes, mask: bytearray, off: int, end: int, next_type: int) -> None:
    """Mark the reserved bits of a payload chain that parsed (so its lengths hold)."""
    while next_type != PayloadType.NONE and off + 4 <= end:
        following = data[off]
        plen = int.from_bytes(data[off + 2 : off + 4], "big")
        mask[off + 1] |= 0x7F  # RFC 7296 3.2: RESERVED after the critical bit
        body = off + 4
        if next_type == PayloadType.KE:
            mask[body + 2] = mask[body + 3] = 0xFF  # RFC 7296 3.4
        elif next_type in (PayloadType.IDi, PayloadType.IDr, PayloadType.AUTH):
            for i in (1, 2, 3):  # RFC 7296 3.5, 3.8
                mask[body + i] = 0xFF
        elif next_type in (PayloadType.TSi, PayloadType.TSr):
            for i in (1, 2, 3):  # RFC 7296 3.13
                mask[body + i] = 0xFF
        elif next_type == PayloadType.SA:
            _sa_mask(data, mask, body, off + plen)
        elif next_type in (PayloadType.SK, PayloadType.SKF):
            return
        off += plen
        next_type = following


def _sa_mask(data: bytes, mask: bytearray, off: int, end: int) -> None:
    while off + 8 <= end:
        plen = int.from_bytes(data[off + 2 : off + 4], "big")
        mask[off + 1] = 0xFF  # RFC 7296 3.3.1 RESERVED
        t = off + 8 + data[off + 6]
        for _ in range(data[off + 7]):
            tlen = int.from_bytes(data[t + 2 : t + 4], "big")
            mask[t + 1] = mask[t + 5] = 0xFF  # RFC 7296 3.3.2 RESERVED
            t += tlen
        off += plen


def reserved_mask(data: bytes, *, chain_first: int | None = None) -> bytes:
    """The bits of ``data`` (a datagram, or a bare chain starting with ``chain_first``)
    that RFC 7296 calls RESERVED: a parser ignores them, a builder sends zeros."""
    mask = bytearray(len(data))
    if chain_first is None:
        _chain_mask(data, mask, 28, len(data), data[16])
    else:
        _chain_mask(data, mask, 0, len(data), chain_first)
    return bytes(mask)


def _same_but_reserved(original: bytes, rebuilt: bytes, mask: bytes, what: str) -> None:
    if len(original) != len(rebuilt):
        raise Finding(f"{what}: rebuilt {len(rebuilt)} bytes from {len(original)}")
    for i, (x, y, m) in enumerate(zip(original, rebuilt, mask, strict=True)):
        if (x & ~m) != (y & ~m) or y & m:
            raise Finding(f"{what}: byte {i} was {x:#04x}, rebuilt {y:#04x} (reserved {m:#04x})")


# --------------------------------------------------------------------------- checks


def _typed(exc: IkeError) -> None:
    text = str(exc)
    # error texts name places and numbers, never echo raw (possibly secret) bytes
    if "\\x" in text or "b'" in text or len(text) > 300:
        raise Finding(f"error text shows raw bytes or is too long: {text[:200]!r}")


def _bounded(payloads: tuple[codec.Payload, ...], length: int, what: str) -> None:
    n = _weight(payloads)
    if n > max(length, 1):
        raise Finding(f"{what}: {n} elements decoded from {length} bytes (unbounded work)")


def _weight(payloads: tuple[codec.Payload, ...]) -> int:
    n = 0
    for p in payloads:
        n += 1
        if isinstance(p, codec.SaPayload):
            n += sum(1 + len(t.attributes) for prop in p.proposals for t in prop.transforms)
            n += len(p.proposals)
        elif isinstance(p, codec.TsiPayload | codec.TsrPayload):
            n += len(p.selectors)
        elif isinstance(p, codec.DeletePayload):
            n += len(p.spis)
    return n


def check_message(data: bytes) -> codec.Message | None:
    try:
        msg = codec.parse_message(data)
    except IkeError as exc:
        _typed(exc)
        return None
    _bounded(msg.payloads, len(data), "parse_message")
    rebuilt = codec.build_message(msg)
    if codec.parse_message(rebuilt) != msg:
        raise Finding("parse_message(build_message(m)) != m")
    _same_but_reserved(data, rebuilt, reserved_mask(data), "build_message")
    return msg


def check_chain(first: int, data: bytes) -> tuple[codec.Payload, ...] | None:
    try:
        payloads = codec.parse_payloads(data, first)
    except IkeError as exc:
        _typed(exc)
        return None
    _bounded(payloads, len(data), "parse_payloads")
    got_first, rebuilt = codec.build_payloads(payloads)
    if payloads and got_first != first:
        raise Finding(f"build_payloads says first type {got_first}, parsed from {first}")
    if codec.parse_payloads(rebuilt, first) != payloads:
        raise Finding("parse_payloads(build_payloads(p)) != p")
    _same_but_reserved(data, rebuilt, reserved_mask(data, chain_first=first), "build_payloads")
    return payloads


def _seal_padded(cipher: SkCipher, prefix: bytes, padded: bytes, iv: bytes) -> bytes:
    """IV || ciphertext || ICV of ``padded`` as it stands (RFC 7296 3.14): unlike
    ``SkCipher.seal``, the padding and Pad Length octet are the caller's."""
    if cipher.encr_id == EncrId.AES_CBC:
        enc = Cipher(algorithms.AES(cipher.encr_key), modes.CBC(iv)).encryptor()
        ct = enc.update(padded) + enc.finalize()
        icv = hmac.digest(cipher.integ_key, prefix + iv + ct, "sha256")[:16]
        return iv + ct + icv
    key, salt = cipher.encr_key[:-_SALT], cipher.encr_key[-_SALT:]
    aead = ChaCha20Poly1305(key) if cipher.encr_id == EncrId.CHACHA20_POLY1305 else AESGCM(key)
    return iv + aead.encrypt(salt + iv, padded, prefix)


def check_authentic(selector: int, first: int, padded: bytes) -> None:
    cipher = CIPHERS[selector % len(CIPHERS)]
    if cipher.block_size > 1:
        padded += bytes(-len(padded) % cipher.block_size)
    if not padded:
        return
    iv = bytes(cipher.iv_size)
    body_len = cipher.iv_size + len(padded) + cipher.icv_size
    header = (
        bytes(range(1, 17))
        + bytes((PayloadType.SK, 0x20, ExchangeType.INFORMATIONAL, HeaderFlag.INITIATOR))
        + bytes(4)
        + (28 + 4 + body_len).to_bytes(4, "big")
    )
    prefix = header + bytes((first, 0)) + (4 + body_len).to_bytes(2, "big")
    data = prefix + _seal_padded(cipher, prefix, padded, iv)
    msg = codec.parse_message(data)  # the framing is ours: it must parse
    pad = padded[-1]
    plaintext = padded[: len(padded) - pad - 1] if pad + 1 <= len(padded) else None
    try:
        inner = codec.decrypt_sk(data, msg, cipher)
    except IkeIntegrityError as exc:
        raise Finding(f"an authentic SK payload failed its integrity check: {exc}") from None
    except IkeError as exc:
        _typed(exc)
        if plaintext is not None:
            try:
                codec.parse_payloads(plaintext, first)
            except IkeError:
                return
            raise Finding(f"decrypt_sk refused a well-formed SK payload: {exc}") from None
        return
    if plaintext is None:
        raise Finding(f"decrypt_sk accepted Pad Length {pad} in {len(padded)} bytes")
    if inner != codec.parse_payloads(plaintext, first):
        raise Finding("decrypt_sk returned another chain than its plaintext holds")


def fuzz_one(data: bytes) -> None:
    if len(data) < 2:
        return
    mode, rest = data[0] & 3, data[1:]
    if mode == 0:
        check_message(rest)
    elif mode == 1:
        check_chain(rest[0], rest[1:])
    elif mode == 2:
        msg = check_message(rest[1:])
        if msg is None or msg.sk is None:
            return
        try:
            inner = codec.decrypt_sk(rest[1:], msg, CIPHERS[rest[0] % len(CIPHERS)])
        except IkeError as exc:
            _typed(exc)
            return
        _bounded(inner, len(rest), "decrypt_sk")
    elif len(rest) >= 2:
        check_authentic(rest[0], rest[1], rest[2:])


# --------------------------------------------------------------------------- seeds


def _every_payload() -> tuple[codec.Payload, ...]:
    v4 = ipaddress.IPv4Address
    return (
        codec.SaPayload(
            (
                codec.Proposal(
                    1,
                    ProtocolId.IKE,
                    b"",
                    (
                        codec.Transform.make(1, EncrId.AES_CBC, 256),
                        codec.Transform.make(2, 5),
                        codec.Transform.make(3, IntegId.HMAC_SHA2_256_128),
                        codec.Transform.make(4, 19),
                    ),
                ),
                codec.Proposal(
                    2,
                    ProtocolId.ESP,
                    b"\x01\x02\x03\x04",
                    (
                        codec.Transform.make(1, EncrId.AES_GCM_16, 128),
                        codec.Transform(1, 12, (codec.TransformAttribute(99, b"tlv"),)),
                        codec.Transform.make(5, 0),
                    ),
                ),
            )
        ),
        codec.KePayload(19, bytes(64)),
        codec.IdiPayload(2, b"initiator.test"),
        codec.IdrPayload(1, bytes((192, 0, 2, 2))),
        codec.CertPayload(4, b"\x30\x03\x02\x01\x00"),
        codec.CertReqPayload(4, bytes(20)),
        codec.AuthPayload(2, bytes(32)),
        codec.NoncePayload(bytes(range(32))),
        codec.NotifyPayload(16388, bytes(20)),
        codec.NotifyPayload(24, b"", ProtocolId.ESP, b"\x00\x00\x10\x01"),
        codec.DeletePayload(ProtocolId.ESP, 4, (b"\x00\x00\x10\x01", b"\x00\x00\x10\x02")),
        codec.DeletePayload(ProtocolId.IKE, 0),
        codec.VendorIdPayload(b"ipsecd"),
        codec.TsiPayload(
            (
                codec.TrafficSelector(0, 0, 65535, v4("10.1.0.0"), v4("10.1.255.255")),
                codec.TrafficSelector.from_network("fd00::/64", 6, 443, 443),
                codec.RawTrafficSelector(9, 0, bytes(8)),
            )
        ),
        codec.TsrPayload((codec.TrafficSelector(17, 500, 500, v4("10.2.0.1"), v4("10.2.0.1")),)),
        codec.UnknownPayload(47, b"\x01\x00\x00\x00"),
    )


def _our_datagrams() -> list[bytes]:
    """What two of our endpoints send each other: handshake, both rekeys, Delete."""
    ci, cr = make_configs(ike=("aes128-sha256-ecp256",), esp=("aes128gcm16-ecp256",))
    p = Pair([ci], [cr])
    p.initiate("a", ci)
    p.settle()
    (sa,) = p.sas("a")
    sa.rekey_child(sa.children[0].inbound_spi, p.now)
    p.settle()
    (sa,) = p.sas("b")
    sa.rekey_ike(p.now)
    p.settle()
    (sa,) = p.sas("a")
    sa.delete(p.now)
    p.settle()
    return [w.data[4:] if w.dst[1] == 4500 else w.data for w in p.wire]


def seeds() -> list[bytes]:
    out: list[bytes] = []
    every = _every_payload()
    whole = codec.Message(bytes(range(8)), bytes(8), ExchangeType.IKE_AUTH, 0x08, 1, every)
    out.append(b"\x00" + codec.build_message(whole))
    first, chain = codec.build_payloads(every)
    out.append(bytes((1, first)) + chain)
    for path in sorted(CAPTURES.glob("*.bin")):
        raw = path.read_bytes()
        out.append(b"\x00" + raw)
        out.append(b"\x02\x00" + raw)
        msg = codec.parse_message(raw)
        inner = path.with_suffix(".inner")
        if msg.sk is not None and inner.exists():
            plain = inner.read_bytes()
            out.append(bytes((1, msg.sk.first_payload)) + plain)
            out.append(bytes((3, 0, msg.sk.first_payload)) + plain + b"\x00")
            out.append(bytes((3, 2, msg.sk.first_payload)) + plain + bytes(3) + b"\x03")
    for datagram in _our_datagrams():
        out.append(b"\x00" + datagram)
    for i, p in enumerate(every):
        first, chain = codec.build_payloads([p])
        out.append(bytes((1, first)) + chain)
        out.append(bytes((3, i, first)) + chain + b"\x00")
    return out


if __name__ == "__main__":
    run("codec", fuzz_one, seeds, max_len=4096)
