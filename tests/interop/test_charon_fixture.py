"""tests/support/charon.py itself, charon against charon: the fixture every interop,
kernel-lab and benchmark run relies on (config rendering, vici, swanctl, teardown)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.charon import (
    Charon,
    CharonError,
    Child,
    Conn,
    expected_charon_algs,
    render_swanctl_conf,
)
from tests.support.netns import netns_pair

PSK = "fixture-psk-0123456789abcdef"


def conns(ike: str, esp: str, psk_b: str = PSK) -> tuple[Conn, Conn]:
    a = Conn("fx", ("192.0.2.1",), ("192.0.2.2",), "a.test", "b.test", PSK, (ike,),
             (Child("c", ("198.51.100.1/32",), ("198.51.100.2/32",), (esp,)),))  # fmt: skip
    b = Conn("fx", ("192.0.2.2",), ("192.0.2.1",), "b.test", "a.test", psk_b, (ike,),
             (Child("c", ("198.51.100.2/32",), ("198.51.100.1/32",), (esp,)),))  # fmt: skip
    return a, b


def test_charon_to_charon_handshake_and_swanctl_agree(tmp_path: Path) -> None:
    ike, esp = "aes256-sha256-modp2048", "aes256-sha256"
    conn_a, conn_b = conns(ike, esp)
    with netns_pair("iki-") as (a, b):
        a.run(["ip", "addr", "add", "198.51.100.1/32", "dev", "lo"])
        b.run(["ip", "addr", "add", "198.51.100.2/32", "dev", "lo"])
        with Charon.started(a, tmp_path / "a") as ca, Charon.started(b, tmp_path / "b") as cb:
            ca.load([conn_a])
            # B is loaded from the rendered swanctl.conf by swanctl itself: proves the
            # rendering is what vici gets.
            conf = tmp_path / "b-swanctl.conf"
            conf.write_text(render_swanctl_conf([conn_b]))
            out = cb.swanctl("--load-all", "--noprompt", "--file", str(conf))
            assert "loaded connection 'fx'" in out
            ca.initiate("c", ike="fx")
            sa_a, sa_b = ca.list_sas()[0], cb.list_sas()[0]
            assert sa_a["state"] == sa_b["state"] == "ESTABLISHED"
            assert sa_a["initiator-spi"] == sa_b["initiator-spi"]
            assert sa_a["initiator"] == "yes" and "initiator" not in sa_b
            want = expected_charon_algs(ike, ike=True)
            assert {k: sa_a[k] for k in want} == want
            ch_a = next(iter(sa_a["child-sas"].values()))
            ch_b = next(iter(sa_b["child-sas"].values()))
            assert ch_a["spi-in"] == ch_b["spi-out"] and ch_a["spi-out"] == ch_b["spi-in"]
            want_c = expected_charon_algs(esp, ike=False)
            assert {k: ch_a[k] for k in want_c} == want_c
            assert ch_a["encap"] == "yes"  # kernel-libipsec fakes NAT: ESP in UDP
            listed = cb.swanctl("--list-sas")
            assert ch_b["spi-in"] in listed and "AES_CBC-256/HMAC_SHA2_256_128" in listed
            pid = ca.proc.pid if ca.proc else 0
        assert not ca.running and not cb.running
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_wrong_psk_is_reported_with_the_log(tmp_path: Path) -> None:
    conn_a, conn_b = conns("aes256gcm16-prfsha384-ecp384", "aes256gcm16", "other-psk-987654321")
    with (
        netns_pair("iki-") as (a, b),
        Charon.started(a, tmp_path / "a") as ca,
        Charon.started(b, tmp_path / "b") as cb,
    ):
        ca.load([conn_a])
        cb.load([conn_b])
        with pytest.raises(CharonError, match=r"initiate c .* failed") as err:
            ca.initiate("c", ike="fx", timeout=8)
        assert "AUTHENTICATION_FAILED" in str(err.value)
        assert ca.list_sas() == [] and cb.list_sas() == []


def test_psk_never_in_repr() -> None:
    conn_a, _ = conns("aes256gcm16-prfsha384-ecp384", "aes256gcm16")
    assert PSK not in repr(conn_a)
    assert PSK in render_swanctl_conf([conn_a])  # only in the 0600 file charon reads
    assert PSK not in render_swanctl_conf([conn_a], with_secrets=False)


def test_start_failure_names_the_cause(tmp_path: Path) -> None:
    with netns_pair("iki-") as (a, _):
        charon = Charon(a, tmp_path / "bad", plugins=("no-such-plugin", "vici"))
        with pytest.raises(CharonError, match="charon in netns iki-"):
            charon.start(timeout=5)
        charon.stop()
        assert not charon.running
