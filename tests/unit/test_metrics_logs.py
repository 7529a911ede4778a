"""The pieces of metrics and logs both daemons share (ipsecd/metrics_common.py,
ipsecd/logformat.py), the agent's bounded labels and SA traffic sums
(agent/metrics.py), and the Grafana dashboard file (docs/operations.md "Metrics").
Real daemons are scraped in tests/integration/agent/test_metrics.py."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from agent.metrics import AgentMetrics, failure_reason
from ipsecd import xfrm
from ipsecd.logformat import JsonFormatter, configure, make_formatter
from ipsecd.metrics_common import (
    LoopCollector,
    MetricsError,
    MetricsServer,
    new_registry,
    parse_listen,
)
from tests.support.metrics import (
    DASHBOARD,
    PREFIXES,
    dashboard,
    dashboard_exprs,
    expr_metric_names,
    scrape_sync,
)

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


# ---------------------------------------------------------------- --metrics-listen
@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("0.0.0.0:9470", ("0.0.0.0", 9470)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        (":9471", ("0.0.0.0", 9471)),
        ("[::]:9470", ("::", 9470)),
        ("[fd00::1]:9470", ("fd00::1", 9470)),
        ("metrics.example:9470", ("metrics.example", 9470)),
    ],
)
def test_listen_addresses(text: str, want: tuple[str, int]) -> None:
    assert parse_listen(text) == want


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("9470", "expected HOST:PORT"),
        ("0.0.0.0:http", "expected HOST:PORT"),
        ("0.0.0.0:70000", "outside 0..65535"),
        ("::1:9470", "in brackets, [::1]:9470"),
        ("[10.0.0.1]:9470", "brackets hold an IPv6 address"),
    ],
)
def test_bad_listen_addresses_name_the_option_and_the_fix(text: str, says: str) -> None:
    with pytest.raises(MetricsError, match=re.escape(says)) as err:
        parse_listen(text)
    assert str(err.value).startswith(f"--metrics-listen {text!r}")


def test_a_taken_port_is_refused_with_the_address() -> None:
    first = MetricsServer(new_registry(), "127.0.0.1", 0)
    port = first.start()
    try:
        with pytest.raises(MetricsError, match=rf"127\.0\.0\.1:{port}: cannot listen"):
            MetricsServer(new_registry(), "127.0.0.1", port).start()
    finally:
        first.close()


# ---------------------------------------------------------------- the loop collector
def test_scrapes_are_answered_on_the_daemons_loop() -> None:
    """The HTTP thread asks the loop; the gather coroutine runs there (it may await),
    and sees the state as the loop left it; calling collect() on the loop itself is an
    error, not a deadlock."""
    state = {"n": 0}

    async def gather() -> list[Metric]:
        await asyncio.sleep(0)  # a kernel dump awaits here in the agent
        asyncio.get_running_loop()  # raises unless on the loop
        return [GaugeMetricFamily("ipsecd_test_value", "test", value=state["n"])]

    async def main() -> None:
        registry = new_registry()
        collector = LoopCollector(gather, asyncio.get_running_loop())
        registry.register(collector)
        server = MetricsServer(registry, "127.0.0.1", 0)
        await asyncio.to_thread(server.start)
        try:
            state["n"] = 7
            got = await asyncio.to_thread(scrape_sync, server.address)
            assert got.value("ipsecd_test_value") == 7
            assert (got.value("process_resident_memory_bytes") or 0) > 0
            state["n"] = 8
            got = await asyncio.to_thread(scrape_sync, server.address)
            assert got.value("ipsecd_test_value") == 8
            with pytest.raises(RuntimeError, match="scrape over HTTP"):
                collector.collect()
        finally:
            await server.aclose()

    asyncio.run(main())


# ---------------------------------------------------------------- agent labels
def test_failure_reasons_are_a_bounded_set() -> None:
    assert failure_reason(24, ike=True) == "authentication_failed"
    assert failure_reason(14, ike=False) == "no_proposal_chosen"
    assert failure_reason(None, ike=True) == "timeout"
    assert failure_reason(None, ike=False) == "local"
    assert failure_reason(59999, ike=True) == "other"  # whatever a peer sends


def _state(spi: int, dst: str, reqid: int, nbytes: int, packets: int) -> Any:
    return SimpleNamespace(
        spi=spi,
        proto=xfrm.Proto.ESP,
        dst=xfrm.address(dst),
        reqid=reqid,
        current=xfrm.LifetimeCurrent(nbytes, packets, 0, 0),
    )


def _daemon(conns: dict[str, tuple[int, str, str]]) -> Any:
    return SimpleNamespace(
        supervisor=SimpleNamespace(
            conns={
                name: SimpleNamespace(reqid=r, ike=SimpleNamespace(connection=c, peer=p))
                for name, (r, c, p) in conns.items()
            }
        ),
        writer=SimpleNamespace(local=frozenset({xfrm.address("192.0.2.1")})),
    )


def test_sa_traffic_is_summed_per_connection_and_survives_rekeys() -> None:
    """An SA's bytes stay counted after a rekey replaced it (the counter only grows);
    SAs of other owners are left out; a connection gone from the policy loses its
    series; --metrics-by-peer no drops the peer label."""
    m = AgentMetrics(Any, by_peer=True)  # type: ignore[arg-type]
    d = _daemon({"mesh/b/ipv4": (0x49508000, "mesh", "b")})
    first = [
        _state(0x100, "192.0.2.1", 0x49508000, 1000, 10),  # in
        _state(0x200, "192.0.2.2", 0x49508000, 400, 4),  # out
        _state(0x300, "192.0.2.1", 7, 99999, 999),  # not ours
    ]
    assert m._traffic(d, first) == {
        ("mesh", "b", "in"): (1000, 10),
        ("mesh", "b", "out"): (400, 4),
    }
    rekeyed = [
        _state(0x101, "192.0.2.1", 0x49508000, 50, 1),
        _state(0x201, "192.0.2.2", 0x49508000, 20, 1),
    ]
    assert m._traffic(d, rekeyed) == {
        ("mesh", "b", "in"): (1050, 11),
        ("mesh", "b", "out"): (420, 5),
    }
    assert m._traffic(_daemon({}), []) == {}
    flat = AgentMetrics(Any, by_peer=False)  # type: ignore[arg-type]
    assert flat._traffic(d, first) == {("mesh", "in"): (1000, 10), ("mesh", "out"): (400, 4)}


# ---------------------------------------------------------------- logs
def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    logger = logging.getLogger("ipsecd.test")
    return logger.makeRecord("ipsecd.test", logging.WARNING, __file__, 1, msg, args, None,
                             extra=extra)  # fmt: skip


def test_json_lines_carry_the_fields_and_the_structured_extras() -> None:
    line = JsonFormatter({"node": "a"}).format(
        _record("%s: two\nlines", "conn", connection="mesh", revision=3, spis=(1, 2))
    )
    assert "\n" not in line
    rec = json.loads(line)
    assert rec["level"] == "warning" and rec["logger"] == "ipsecd.test"
    assert rec["message"] == "conn: two\nlines"
    assert rec["node"] == "a" and rec["connection"] == "mesh" and rec["revision"] == 3
    assert rec["spis"] == [1, 2]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", rec["time"])
    assert set(rec) == {"time", "level", "logger", "message", "node", "pid", "connection",
                        "revision", "spis"}  # fmt: skip


def test_json_lines_show_exceptions_not_raw_arguments() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = _record("failed")
        record.exc_info = sys.exc_info()
    rec = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in rec["exception"]
    assert "args" not in rec and "msg" not in rec


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="use one of text, json"):
        make_formatter("yaml", "%(message)s")


def test_configure_keeps_other_libraries_at_warnings() -> None:
    """-m verbose shows our debug lines, never a library's (their debug output may
    dump requests carrying policies)."""
    top = logging.getLogger()
    saved = (list(top.handlers), top.level)
    ours, theirs = logging.getLogger("ipsecd.unit"), logging.getLogger("etcd3aio.unit")
    saved_levels = {n: logging.getLogger(n).level for n in ("ipsecd", "controller")}
    out = io.StringIO()
    try:
        configure("verbose", "json", ours=("ipsecd", "controller"), text_format="%(message)s",
                  fields={"replica": "r1"}, stream=out)  # fmt: skip
        ours.debug("ours at debug")
        theirs.debug("theirs at debug")
        theirs.warning("theirs at warning")
    finally:
        for h in list(top.handlers):
            top.removeHandler(h)
        for h in saved[0]:
            top.addHandler(h)
        top.setLevel(saved[1])
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)
    lines = [json.loads(ln) for ln in out.getvalue().splitlines()]
    assert [r["message"] for r in lines] == ["ours at debug", "theirs at warning"]
    assert all(r["replica"] == "r1" for r in lines)


# ---------------------------------------------------------------- the dashboard
def test_dashboard_is_valid_and_queries_only_documented_metrics() -> None:
    board = dashboard()  # valid JSON
    assert DASHBOARD.parent.name == "dashboards" and board["uid"] == "ipsecd-overview"
    panels = [p for p in board["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for p in panels:
        assert p["targets"], p["title"]
        assert p["datasource"]["uid"] == "${datasource}"
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24, p["title"]
    docs = OPERATIONS.read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `((?:ipsecd|process|python)_[a-z0-9_]+)`", docs, re.M))
    for title, expr in dashboard_exprs(board):
        names = expr_metric_names(expr)
        assert names, f"{title}: {expr}"
        for name in names:
            assert name.startswith(PREFIXES)
            base = re.sub(r"_(total|bucket|count|sum)$", "", name)
            assert name in documented or base in documented, f"{title}: {name} not in the docs"
