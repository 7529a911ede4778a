"""What the host kernel (no ESP) allows for states: SPI allocation (larval SAs), get,
dump, delete, counters — and clear errors for real SAs."""

from __future__ import annotations

import pytest

from ipsecd.xfrm import (
    Proto,
    State,
    XfrmClient,
    XfrmNotFound,
    XfrmUnsupported,
    address,
    aes_cbc,
    aes_gcm,
    hmac_sha2,
    plan,
)
from ipsecd.xfrm.ownership import DEFAULT_OWNERSHIP as OWN
from tests.support.netns import Netns

from .conftest import run

A, B = address("192.0.2.1"), address("192.0.2.2")


def test_alloc_spi_get_dump_delete(ns: Netns) -> None:
    async def go() -> None:
        async with XfrmClient(ns.name) as x:
            spi = await x.alloc_spi(B, A, reqid=OWN.reqid(1), spi_min=0x1000, spi_max=0x1FFF)
            assert 0x1000 <= spi <= 0x1FFF
            larval = await x.get_state(State(B, A, spi))
            assert (larval.spi, larval.reqid, larval.src, larval.dst) == (spi, OWN.reqid(1), B, A)
            assert larval.aead is None and larval.crypt is None
            assert (await x.sad_info()).count == 1
            assert [s.spi for s in await x.dump_states()] == [spi]
            # the reconciler leaves an SPI reservation in progress alone
            assert plan([], [], [], await x.dump_states(), local=[A]) == []
            await x.delete_state(larval)
            with pytest.raises(XfrmNotFound, match=f"get SA esp spi {spi:#010x}"):
                await x.get_state(larval)
            assert await x.dump_states() == []

    run(go())
    assert ns.run(["ip", "xfrm", "state", "list"]).stdout.strip() == ""


def test_real_sa_errors_say_what_is_missing(ns: Netns) -> None:
    async def go() -> None:
        async with XfrmClient(ns.name) as x:
            with pytest.raises(XfrmUnsupported, match=r"kernel lacks rfc4106\(gcm\(aes\)\)"):
                await x.add_state(State(A, B, 0x100, aead=aes_gcm(b"k" * 20)))
            with pytest.raises(XfrmUnsupported, match=r"kernel has no ESP \(CONFIG_INET_ESP"):
                await x.add_state(
                    State(A, B, 0x101, crypt=aes_cbc(b"k" * 16), auth=hmac_sha2(256, b"a" * 32))
                )
            with pytest.raises(XfrmUnsupported, match=r"kernel has no AH"):
                await x.add_state(State(A, B, 0x102, Proto.AH, auth=hmac_sha2(256, b"a" * 32)))

    # This host tier runs on kernels without ESP (see LAB-NOTES); the lab VM has it.
    esp_probe = ns.run(
        [
            "ip",
            "xfrm",
            "state",
            "add",
            "src",
            "192.0.2.1",
            "dst",
            "192.0.2.2",
            "proto",
            "esp",
            "spi",
            "0x200",
            "enc",
            "cbc(aes)",
            "0x" + "00" * 16,
        ],
        check=False,
    )
    assert "Requested type not found" in esp_probe.stderr, (
        "this host kernel has ESP: these host-tier expectations do not apply; run the "
        "kernel tier instead"
    )
    run(go())
