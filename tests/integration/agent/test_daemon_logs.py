"""``--log-format json`` and ``-m verbose`` of both daemons as real processes, with
real secrets around: a controller serving mTLS from its state directory (CA and
serving keys), two agents streaming with their node certificates and negotiating IKE
with a PSK the pushed policy carries, ``ipsecctl get --show-secrets`` on the way.

Every line each process logs (stderr, and the agent's ``-o`` debug file) is one JSON
object with time, level, logger and message; no line holds the PSK or any part of a
private key (docs/operations.md "Logs", docs/security.md).  Both also serve
``--metrics-listen``, whose pages are held to the same rule."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.ca import Role
from controller.embedded_etcd import free_port
from controller.statedir import init_state, issue_credentials
from tests.integration.controller.clirun import ipsecctl
from tests.support.agents import CHECKOUT, AgentProcess, write_private
from tests.support.aio import run_async
from tests.support.etcd import EtcdProcess
from tests.support.metrics import Scrape, scrape
from tests.support.netns import Netns, netns_pair

PSK = "json-log-test-psk-4b9e21f0"
POLICY = f"""
defaults {{ policy discard; }}
connection mesh {{ between all and all; mode transport; auth psk "{PSK}"; }}
bypass icmp6 type 135;
bypass icmp6 type 136;
"""
LEVELS = {"debug", "info", "warning", "error", "critical"}


@pytest.fixture
def pair() -> Iterator[tuple[Netns, Netns]]:
    with netns_pair("ilg-") as p:
        yield p


def key_fragments(path: Path) -> list[str]:
    """The base64 lines of every PEM private key in ``path`` (a key file, or a config
    holding one as a JSON string), and the same bytes in hex."""
    text = path.read_text()
    if path.suffix in (".conf", ".json"):
        text = json.loads(text)["key"]
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("-----")]
    assert lines, f"no key in {path}"
    out = [ln for ln in lines if len(ln) >= 16]
    out.append(base64.b64decode("".join(lines)).hex()[16:80])  # the DER, past its header
    return out


def json_lines(path: Path, **fields: str) -> list[dict[str, object]]:
    records = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            raise AssertionError(f"{path}:{n}: not JSON: {line!r}") from None
        assert isinstance(rec, dict), f"{path}:{n}: {line!r}"
        for key in ("time", "level", "logger", "message"):
            assert key in rec, f"{path}:{n}: no {key!r}: {line!r}"
        assert rec["level"] in LEVELS, f"{path}:{n}: {line!r}"
        assert str(rec["time"]).endswith("Z"), f"{path}:{n}: {line!r}"
        for key, value in fields.items():
            assert rec.get(key) == value, f"{path}:{n}: {key} != {value!r}: {line!r}"
        records.append(rec)
    return records


async def eventually_scrape(address: str, pred: object, what: str, timeout: float) -> Scrape:
    assert callable(pred)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            got = await scrape(address)
        except OSError:  # not listening yet
            got = None
        if got is not None and pred(got):
            return got
        if loop.time() > deadline:
            raise AssertionError(
                f"timed out waiting for {what}: {got.text if got else 'no answer'}"
            )
        await asyncio.sleep(0.2)


@run_async(240)
async def test_json_logs_at_debug_level_hold_no_secret(
    pair: tuple[Netns, Netns], tmp_path: Path, etcd_session: EtcdProcess
) -> None:
    state = tmp_path / "ctl"
    init_state(state)
    certs = tmp_path / "certs"
    nodes = {"a": (pair[0], "192.0.2.1", "fd00::1"), "b": (pair[1], "192.0.2.2", "fd00::2")}
    for name, (_ns, v4, v6) in nodes.items():
        issue_credentials(state, Role.NODE, name, certs, hosts=[v4, v6])
    listen = f"127.0.0.1:{free_port()}"
    ctl_metrics = f"127.0.0.1:{free_port()}"
    ctl_err = tmp_path / "controller.stderr"
    pki = etcd_session.tls
    assert pki is not None
    with ctl_err.open("wb") as err:
        ctl = subprocess.Popen(
            [sys.executable, "-m", "controller.main", "--state-dir", str(state),
             "--listen", listen, "--etcd", etcd_session.url,
             "--etcd-cacert", str(pki.ca_cert), "--etcd-cert", str(pki.client_cert),
             "--etcd-key", str(pki.client_key),
             "--key-root", f"/lg{os.getpid()}-{id(tmp_path)}/", "-m", "verbose",
             "--log-format", "json", "--metrics-listen", ctl_metrics],
            stdout=subprocess.DEVNULL, stderr=err, cwd=CHECKOUT,
        )  # fmt: skip
    agents: dict[str, AgentProcess] = {}
    metrics: dict[str, str] = {}
    try:
        await eventually_scrape(
            ctl_metrics, lambda s: s.value("ipsecd_controller_info") == 1, "the controller", 30
        )
        for name, (ns, v4, v6) in nodes.items():
            metrics[name] = f"127.0.0.1:{free_port()}"
            work = tmp_path / f"agent-{name}"
            work.mkdir()
            agents[name] = AgentProcess(
                ["--controller", listen, "--node", name, "--addresses", f"{v4},{v6}",
                 "--netns", ns.name, "--cert", str(certs / f"{name}.pem"),
                 "--key", str(certs / f"{name}.key"), "--ca", str(certs / "ca.pem"),
                 "--crl", str(certs / "crl.pem"), "--state-dir", str(work / "state"),
                 "--socket", str(work / "ipsecd.sock"), "-m", "verbose",
                 "--log-format", "json", "-o", str(work / "debug.log"),
                 "--metrics-listen", metrics[name]],
                work / "stderr.log",
            ).start()  # fmt: skip
        spd = write_private(tmp_path / "policy.spd", POLICY)
        config = state / "admin.conf"
        pushed = await ipsecctl("push", str(spd), controller=listen, config=config)
        assert pushed.code == 0, pushed
        shown = await ipsecctl("get", "--show-secrets", controller=listen, config=config)
        assert shown.code == 0 and PSK in shown.out, shown
        scrapes = [
            await eventually_scrape(
                metrics[name],
                lambda s: (
                    s.value("ipsecd_policy_applied_revision") == 1
                    and (s.value("ipsecd_ike_sas") or 0) >= 1
                ),
                f"revision 1 and an IKE SA on {name}",
                90,
            )
            for name in nodes
        ]
        scrapes.append(await scrape(ctl_metrics))
    finally:
        codes = {name: agent.stop() for name, agent in agents.items()}
        ctl.send_signal(signal.SIGTERM)
        try:
            ctl.wait(20)
        except subprocess.TimeoutExpired:
            ctl.kill()
            ctl.wait(5)
    assert codes == {"a": 0, "b": 0}, {n: a.log_tail() for n, a in agents.items()}

    # both daemons run the GC keeper (docs/architecture.md "Garbage collection"): its
    # start-up freeze is counted, the heap is frozen, and the names are documented
    docs = (Path(__file__).resolve().parents[3] / "docs" / "operations.md").read_text()
    for prefix, page in (("ipsecd", scrapes[0]), ("ipsecd_controller", scrapes[-1])):
        assert page.value(f"{prefix}_gc_freezes_total", reason="start") == 1, prefix
        assert (page.value(f"{prefix}_gc_frozen_objects") or 0) > 10_000, prefix
        assert page.value(f"{prefix}_gc_collections_total", generation="0") is not None
        for family in ("pause_seconds_total", "collections_total", "freezes_total"):
            assert f"`ipsecd_controller_gc_{family}`" in docs

    logs = {ctl_err: json_lines(ctl_err, replica=f"{os.uname().nodename}-{listen.split(':')[1]}")}
    for name in nodes:
        for file in ("stderr.log", "debug.log"):
            path = tmp_path / f"agent-{name}" / file
            logs[path] = json_lines(path, node=name)
    # debug level reached the agent's loggers, and IKE_AUTH exchanges were logged
    ctl_levels = {r["level"] for r in logs[ctl_err]}
    assert "debug" in ctl_levels or "info" in ctl_levels, ctl_levels
    agent_debug = logs[tmp_path / "agent-a" / "debug.log"]
    assert any(
        r["level"] == "debug" and str(r["logger"]).startswith("ipsecd.ike") for r in agent_debug
    )
    assert any("EXPECT_AUTH_RESPONSE -> ESTABLISHED" in str(r["message"]) for r in agent_debug)
    # no secret anywhere
    secrets = [PSK, PSK.encode().hex()]
    for key in (
        certs / "a.key",
        certs / "b.key",
        state / "pki" / "ca.key",
        state / "pki" / "server.key",
        state / "admin.conf",
    ):
        secrets += key_fragments(key)
    secrets.append((state / "envelope.key").read_bytes().hex())
    texts = {str(path): path.read_text() for path in logs}
    texts.update({f"scrape {i}": s.text for i, s in enumerate(scrapes)})
    for where, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"{where} holds a secret ({secret[:6]}...)"
