"""Key material never shows in reprs or error messages."""

from __future__ import annotations

import errno

from ipsecd.xfrm.client import Request
from ipsecd.xfrm.errors import Op
from ipsecd.xfrm.model import Aead, Auth, Crypt, State, address, aes_cbc, aes_gcm, hmac_sha2

KEY = bytes.fromhex("deadbeefcafebabe00112233445566778899aabb")
KEY_TEXTS = [KEY.hex(), repr(KEY), "deadbeef", str(list(KEY[:4]))[1:-1]]


def _assert_clean(text: str) -> None:
    for k in KEY_TEXTS:
        assert k not in text, f"key material {k!r} leaked into {text!r}"


def test_reprs_hide_keys() -> None:
    s = State(
        address("192.0.2.1"),
        address("192.0.2.2"),
        0x100,
        crypt=aes_cbc(KEY[:16]),
        auth=hmac_sha2(256, KEY + KEY[:12]),
    )
    g = State(address("192.0.2.1"), address("192.0.2.2"), 0x101, aead=aes_gcm(KEY))
    for obj in (s, g, Aead("x", KEY), Auth("x", KEY), Crypt("x", KEY)):
        _assert_clean(repr(obj))
        _assert_clean(str(obj))
    assert "cbc(aes)" in repr(s)  # the algorithm name stays visible


def test_error_messages_hide_keys() -> None:
    g = State(address("192.0.2.1"), address("192.0.2.2"), 0x101, aead=aes_gcm(KEY))
    req = Request(b"", Op.ADD_STATE, g)
    for err in (errno.ENOSYS, errno.EEXIST, errno.EINVAL, errno.EPROTONOSUPPORT):
        exc = req.error(err, "kernel text")
        _assert_clean(str(exc))
        _assert_clean(repr(exc))
        assert "spi 0x00000101" in str(exc)


def test_encoded_request_repr_hides_keys() -> None:
    from ipsecd.xfrm import codec

    g = State(address("192.0.2.1"), address("192.0.2.2"), 0x101, aead=aes_gcm(KEY))
    req = Request(codec.encode_state(g, 1), Op.ADD_STATE, g)
    assert KEY in req.data  # the wire message does carry it...
    _assert_clean(repr(req))  # ...but its repr does not
