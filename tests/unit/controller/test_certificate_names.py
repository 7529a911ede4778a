"""controller.main.certificate_names: the start-up check that the serving certificate
names the --listen/--advertise hosts follows gRPC's TLS rules, wildcards included (the
Helm chart's replicas advertise POD.<peers>.<namespace>.svc.<domain>, named by one
``*.`` entry: charts/ipsecd/README.md)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from controller import main as ctlmain
from controller.statedir import init_state

PEERS = "*.ipsecd-controller-peers.ipsec-system.svc.cluster.local"


@pytest.mark.parametrize(
    ("host", "named"),
    [
        ("ipsecd-controller-0.ipsecd-controller-peers.ipsec-system.svc.cluster.local", True),
        ("IPSECD-CONTROLLER-1.ipsecd-controller-peers.ipsec-system.svc.cluster.local.", True),
        ("a.b.ipsecd-controller-peers.ipsec-system.svc.cluster.local", False),
        ("ipsecd-controller-peers.ipsec-system.svc.cluster.local", False),
        ("ctl.example.net", True),
        ("other.example.net", False),
        ("[::1]", True),
        ("10.0.0.1", False),
    ],
)
def test_certificate_names(host: str, named: bool) -> None:
    names = (PEERS, "ctl.example.net", "::1", "127.0.0.1")
    assert ctlmain.certificate_names(host, names) is named


def test_no_warning_for_an_advertise_name_under_a_wildcard(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    init_state(tmp_path, listen=["0.0.0.0:7480"], extra_hosts=[PEERS])
    host = "ipsecd-controller-0.ipsecd-controller-peers.ipsec-system.svc.cluster.local"
    args = ctlmain.build_parser().parse_args(
        ["--state-dir", str(tmp_path), "--listen", "0.0.0.0:7480", "--advertise", f"{host}:7480"]
    )
    with caplog.at_level(logging.WARNING):
        ctlmain.security(args)
    assert "will refuse it" not in caplog.text
    args.advertise = "elsewhere.example:7480"
    with caplog.at_level(logging.WARNING):
        ctlmain.security(args)
    assert "elsewhere.example" in caplog.text and "will refuse it" in caplog.text
