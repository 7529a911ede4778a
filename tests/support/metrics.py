"""Scraping ``/metrics`` of real daemons over HTTP, and reading what came back.

* :func:`scrape` — ``GET http://ADDRESS/metrics`` (off the event loop: the daemons'
  collectors run on the loop the test shares with them);
* :class:`Scrape` — the samples by name and labels, and every series name the
  exposition declares (``# TYPE`` lines: a family with no sample yet still counts);
* :func:`dashboard_exprs` / :func:`expr_metric_names` — the Grafana dashboard's
  queries and the metric names in them.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

DASHBOARD = Path(__file__).resolve().parents[2] / "charts/ipsecd/dashboards/ipsecd.json"
#: Every metric name ipsecd exports starts with one of these (the process and
#: Python runtime collectors of prometheus-client are in both registries too).
PREFIXES = ("ipsecd_", "process_", "python_")
_NAME = re.compile(r"(?<![A-Za-z0-9_:])((?:ipsecd|process|python)_[A-Za-z0-9_]+)")


@dataclass(frozen=True)
class Scrape:
    text: str

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        for family in text_string_to_metric_families(self.text):
            for s in family.samples:
                yield s.name, dict(s.labels), float(s.value)

    def value(self, name: str, **labels: str) -> float | None:
        """The sample ``name`` whose labels include ``labels`` (the sum when several
        match); None when there is none."""
        found = [v for n, lab, v in self.samples() if n == name and _within(labels, lab)]
        return sum(found) if found else None

    def labelsets(self, name: str) -> list[dict[str, str]]:
        return [lab for n, lab, _ in self.samples() if n == name]

    def series_names(self) -> set[str]:
        """Names a query may use: declared families (with their histogram and counter
        sample suffixes) and every sample name present."""
        out = {n for n, _, _ in self.samples()}
        for line in self.text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(maxsplit=3)
                if kind == "histogram":
                    out |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
                else:
                    out.add(name)
        return out


def _within(want: dict[str, str], have: dict[str, str]) -> bool:
    return all(have.get(k) == v for k, v in want.items())


def scrape_sync(address: str, timeout: float = 15.0) -> Scrape:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout) as resp:
        assert resp.status == 200, resp.status
        assert resp.headers["Content-Type"].startswith("text/plain"), resp.headers
        return Scrape(resp.read().decode())


async def scrape(address: str) -> Scrape:
    return await asyncio.to_thread(scrape_sync, address)


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def dashboard_exprs(board: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """(panel title, expression) of every target of every panel (rows included), and
    of the template variables' queries."""
    board = board if board is not None else dashboard()
    out: list[tuple[str, str]] = []

    def panels(items: list[dict[str, Any]]) -> None:
        for p in items:
            for t in p.get("targets", []):
                out.append((p.get("title", "?"), t["expr"]))
            panels(p.get("panels", []))

    panels(board.get("panels", []))
    for var in board.get("templating", {}).get("list", []):
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if var.get("type") == "query" and isinstance(query, str):
            out.append((f"variable {var['name']}", query))
    return out


def expr_metric_names(expr: str) -> set[str]:
    return set(_NAME.findall(expr))
