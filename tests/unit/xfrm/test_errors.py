"""errno → typed error mapping: complete for every errno handled, messages say what
is missing and name the object, never the keys."""

from __future__ import annotations

import errno

import pytest

from ipsecd.xfrm import errors
from ipsecd.xfrm.errors import (
    ERRNO_MAP,
    Op,
    XfrmBusy,
    XfrmError,
    XfrmExists,
    XfrmInvalid,
    XfrmNotFound,
    XfrmPermission,
    XfrmUnsupported,
    from_errno,
)

EXPECTED = {
    errno.EEXIST: XfrmExists,
    errno.ENOENT: XfrmNotFound,
    errno.ESRCH: XfrmNotFound,
    errno.EPERM: XfrmPermission,
    errno.EACCES: XfrmPermission,
    errno.EPROTONOSUPPORT: XfrmUnsupported,
    errno.ENOSYS: XfrmUnsupported,
    errno.EOPNOTSUPP: XfrmUnsupported,
    errno.EAFNOSUPPORT: XfrmUnsupported,
    errno.EINVAL: XfrmInvalid,
    errno.ERANGE: XfrmInvalid,
    errno.EMSGSIZE: XfrmInvalid,
    errno.EBADMSG: XfrmInvalid,
    errno.EBUSY: XfrmBusy,
    errno.EAGAIN: XfrmBusy,
    errno.ENOBUFS: XfrmBusy,
    errno.ENOMEM: XfrmBusy,
}


def test_mapping_is_complete() -> None:
    assert set(ERRNO_MAP) == set(EXPECTED)


@pytest.mark.parametrize("err", sorted(EXPECTED))
@pytest.mark.parametrize("op", list(Op))
def test_every_errno_maps_for_every_operation(op: Op, err: int) -> None:
    exc = from_errno(op, err, "out 192.0.2.0/24 -> 198.51.100.0/24")
    assert isinstance(exc, XfrmError)
    assert exc.errno == err
    assert op.value in str(exc)
    assert "192.0.2.0/24" in str(exc)
    assert errno.errorcode[err] in str(exc)
    # a hint may upgrade the class to XfrmUnsupported; otherwise the table decides
    if not isinstance(exc, XfrmUnsupported):
        assert type(exc) is EXPECTED[err]


def test_unknown_errno_still_typed() -> None:
    exc = from_errno(Op.ADD_POLICY, errno.EXDEV, "x")
    assert type(exc) is XfrmError and "EXDEV" in str(exc)


@pytest.mark.parametrize(
    ("proto", "text"),
    [("esp", "kernel has no ESP (CONFIG_INET_ESP"), ("ah", "kernel has no AH (CONFIG_INET_AH")],
)
def test_missing_protocol_is_named(proto: str, text: str) -> None:
    exc = from_errno(
        Op.ADD_STATE, errno.EPROTONOSUPPORT, "spi 1", "Requested type not found", {"proto": proto}
    )
    assert isinstance(exc, XfrmUnsupported)
    assert text in str(exc) and "Requested type not found" in str(exc)


def test_missing_algorithm_is_named() -> None:
    exc = from_errno(
        Op.ADD_STATE,
        errno.ENOSYS,
        "spi 1",
        "Requested AEAD algorithm not found",
        {"proto": "esp", "algorithms": "rfc4106(gcm(aes))"},
    )
    assert isinstance(exc, XfrmUnsupported)
    assert "kernel lacks rfc4106(gcm(aes))" in str(exc)


def test_exists_mentions_foreign_owner() -> None:
    assert "never overwrites" in str(from_errno(Op.ADD_POLICY, errno.EEXIST, "p"))


def test_error_types_share_one_base() -> None:
    for name in dir(errors):
        obj = getattr(errors, name)
        if (
            isinstance(obj, type)
            and issubclass(obj, Exception)
            and obj.__module__ == errors.__name__
        ):
            assert issubclass(obj, XfrmError)
