"""The Libreswan and OpenIKED test peers, proven against strongSwan charon (kernel lab).

tests/support/libreswan.py (``Pluto``) and tests/support/openiked.py (``Iked``) run
third-party IKEv2 daemons in namespaces so that later tests can put our agent against
them.  Here each is paired with charon (tests/support/charon.py, ``kernel-netlink``
only: real ESP) to show that the fixtures bring up real SAs.  Two coarse cases, each
one handshake and one ping (a case costs 15–30 s under TCG)::

    pluto initiates  → charon   tunnel     IPv4  AES-GCM-16-256 / ECP-384
    charon initiates → iked     transport  IPv6  AES-CBC-256 + HMAC-SHA2-512 / MODP-2048

Both ends must list the SAs with the same SPIs and the expected algorithms; a ping
crosses; egress captures on both ends (tests/support/capture.py) show ESP with exactly
those SPIs and no clear-text ICMP echo.  The daemons' logs are attached to failures.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.kernel.conftest import NsPair
from tests.support.capture import EgressCapture, Packet, PacketKind
from tests.support.charon import LAB_PLUGINS, Charon, Child, expected_charon_algs
from tests.support.charon import Conn as CharonConn
from tests.support.libreswan import Conn as PlutoConn
from tests.support.libreswan import Pluto
from tests.support.openiked import Conn as IkedConn
from tests.support.openiked import Iked

PSK = "kernel-lab-peer-psk-0123456789abcdef"  # ≥ 24 bytes: pluto warns below (FIPS)
# Under TCG the first SA with an algorithm makes the kernel load and self-test its
# crypto modules (docs/operations.md, "IKE interop"): give the exchanges time.
INITIATE_TIMEOUT = 150.0
PING = ["ping", "-c", "3", "-i", "0.3", "-W", "5"]
PLUTO_INNER, CHARON_INNER = "198.51.100.1", "198.51.100.2"


@contextlib.contextmanager
def logs_on_failure(**daemons: Any) -> Iterator[None]:
    """Re-raise any failure as an AssertionError carrying each daemon's log tail."""
    try:
        yield
    except Exception as exc:
        logs = "".join(
            f"\n--- {name} log tail ---\n{d.log_tail(80)}" for name, d in daemons.items()
        )
        raise AssertionError(f"{type(exc).__name__}: {exc}{logs}") from exc


def established_charon_sa(charon: Charon) -> dict[str, Any]:
    sas = [s for s in charon.list_sas() if s.get("state") == "ESTABLISHED"]
    assert len(sas) == 1, f"charon has {len(sas)} established IKE SAs: {sas}"
    return sas[0]


def assert_esp_only(packets: list[Packet], spi: int, who: str) -> None:
    """What ``who`` sent: ESP with ``spi`` (at least the 3 pings), no clear echo."""
    esp = [p for p in packets if p.kind is PacketKind.ESP]
    assert len(esp) >= 3, f"{who} sent {len(esp)} ESP packets: {packets}"
    assert {p.spi for p in esp} == {spi}, f"{who} sent ESP SPIs {sorted({p.spi for p in esp})}"
    echoes = [p for p in packets if p.is_echo]
    assert echoes == [], f"{who} sent clear-text ICMP echo: {echoes}"


def test_pluto_initiates_tunnel_to_charon(
    ns_pair: NsPair, egress_capture: Callable[..., EgressCapture], tmp_path: Path
) -> None:
    a, b = ns_pair  # a: pluto 192.0.2.1, b: charon 192.0.2.2
    ike, esp = "aes256gcm16-prfsha384-ecp384", "aes256gcm16"
    a.run(["ip", "addr", "add", f"{PLUTO_INNER}/32", "dev", "lo"])
    b.run(["ip", "addr", "add", f"{CHARON_INNER}/32", "dev", "lo"])
    # charon installs no route here; pluto's updown adds its own (leftsourceip).
    b.run(["ip", "route", "add", f"{PLUTO_INNER}/32", "dev", "veth0", "src", CHARON_INNER])
    charon_conn = CharonConn(
        "peer", (b.addr4,), (a.addr4,), "charon.test", "pluto.test", PSK, (ike,),
        (Child("child", (f"{CHARON_INNER}/32",), (f"{PLUTO_INNER}/32",), (esp,)),),
    )  # fmt: skip
    pluto_conn = PlutoConn(
        "peer", a.addr4, b.addr4, "pluto.test", "charon.test", PSK,
        ike_proposals=(ike,), esp_proposals=(esp,), mode="tunnel",
        local_ts=(f"{PLUTO_INNER}/32",), remote_ts=(f"{CHARON_INNER}/32",),
    )  # fmt: skip
    with (
        Charon.started(
            b, tmp_path / "charon", plugins=LAB_PLUGINS, tuning={"install_routes": "no"}
        ) as charon,
        Pluto.started(a, tmp_path / "pluto") as pluto,
        logs_on_failure(pluto=pluto, charon=charon),
    ):
        charon.load([charon_conn])
        pluto.load([pluto_conn])
        sa = pluto.initiate("peer", timeout=INITIATE_TIMEOUT)

        # both ends hold the same CHILD SA
        (child,) = sa.children
        assert (child.protocol, child.mode) == ("ESP", "tunnel")
        assert sa.algorithms == "AES_GCM_16_256-HMAC_SHA2_384-DH20", sa
        assert child.algorithms.startswith("AES_GCM_16_256"), child
        csa = established_charon_sa(charon)
        assert csa.get("initiator") != "yes"  # pluto initiated
        want = expected_charon_algs(ike, ike=True)
        assert {k: csa.get(k) for k in want} == want
        (cchild,) = csa["child-sas"].values()
        assert (cchild["mode"], cchild["protocol"]) == ("TUNNEL", "ESP")
        assert cchild["spi-in"] == f"{child.spi_out:08x}"
        assert cchild["spi-out"] == f"{child.spi_in:08x}"

        # a ping through the tunnel; what leaves each end is ESP with those SPIs
        cap_a, cap_b = egress_capture(a), egress_capture(b)
        a.run([*PING, "-I", PLUTO_INNER, CHARON_INNER], timeout=60)
        assert_esp_only(cap_a.stop(), child.spi_out, "pluto")
        assert_esp_only(cap_b.stop(), child.spi_in, "charon")
        (after,) = pluto.list_sas()[0].children
        assert after.bytes_in > 0 and after.bytes_out > 0, after


def test_charon_initiates_transport_to_iked(
    ns_pair: NsPair, egress_capture: Callable[..., EgressCapture], tmp_path: Path
) -> None:
    a, b = ns_pair  # a: charon fd00::1, b: iked fd00::2
    ike, esp = "aes256-sha256-modp2048", "aes256-sha512"
    assert a.addr6 and b.addr6
    charon_conn = CharonConn(
        "peer", (a.addr6,), (b.addr6,), "charon.test", "iked.test", PSK, (ike,),
        (Child("child", (f"{a.addr6}/128",), (f"{b.addr6}/128",), (esp,), mode="transport"),),
    )  # fmt: skip
    iked_conn = IkedConn(
        "peer", b.addr6, a.addr6, "iked.test", "charon.test", PSK,
        ike_proposals=(ike,), esp_proposals=(esp,), mode="transport",
    )  # fmt: skip
    with (
        Charon.started(a, tmp_path / "charon", plugins=LAB_PLUGINS) as charon,
        Iked.started(b, tmp_path / "iked") as iked,
        logs_on_failure(iked=iked, charon=charon),
    ):
        iked.load([iked_conn])
        charon.load([charon_conn])
        charon.initiate("child", ike="peer", timeout=INITIATE_TIMEOUT)
        sa = iked.wait_established("peer", timeout=INITIATE_TIMEOUT)

        # both ends hold the same IKE SA and CHILD SA
        assert not sa.initiator
        assert sa.algorithms == "enc aes-256 auth hmac-sha2-256 group modp2048 prf hmac-sha2-256"
        assert sa.child_algorithms == "enc aes-256 auth hmac-sha2-512"
        (child,) = sa.children
        assert child.protocol == "ESP" and child.loaded
        csa = established_charon_sa(charon)
        assert csa.get("initiator") == "yes"
        assert csa["initiator-spi"] == f"{sa.ispi:016x}"
        assert csa["responder-spi"] == f"{sa.rspi:016x}"
        want = expected_charon_algs(ike, ike=True)
        assert {k: csa.get(k) for k in want} == want
        (cchild,) = csa["child-sas"].values()
        assert (cchild["mode"], cchild["protocol"]) == ("TRANSPORT", "ESP")
        want_c = expected_charon_algs(esp, ike=False)
        assert {k: cchild.get(k) for k in want_c} == want_c
        assert cchild["spi-in"] == f"{child.spi_out:08x}"
        assert cchild["spi-out"] == f"{child.spi_in:08x}"

        # a ping between the two addresses; what leaves each end is ESP
        cap_a, cap_b = egress_capture(a), egress_capture(b)
        a.run([*PING, b.addr6], timeout=60)
        assert_esp_only(cap_a.stop(), child.spi_in, "charon")
        assert_esp_only(cap_b.stop(), child.spi_out, "iked")
