"""The per-node view of a policy: compile it for every node of a directory and report
what only the expanded policies show (``ipsecctl validate --nodes``).

The file-level checks (validate.py) see setkey policies and node-independent rules;
``connection`` statements, rules with ``@self`` and rules limited by ``on`` become
kernel policies only per node.  :func:`check_expanded` compiles the policy for every
node and collects the compiler's findings: its warnings (pairs that share no address
family, a peer with a cluster node's address, ...) and the conflicting overlaps among
the node's policies, judged by the verdicts of overlap.py (docs/spd.md section 9:
contained exceptions silent, partial overlaps and dead policies warned, identical
selectors with different actions an error).  The same finding on several nodes is
listed once, with the nodes ("on nodes node-a, node-b").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from .compiler import compile_node
from .errors import Diagnostic, Severity, SpdError
from .limits import MAX_ERRORS, MAX_NODES_LISTED, MAX_WARNINGS
from .model import Policy
from .nodes import NodeInfo

__all__ = ["check_expanded"]


def check_expanded(policy: Policy, directory: Sequence[NodeInfo]) -> list[Diagnostic]:
    """Compile ``policy`` for every node of ``directory``; return the findings, the same
    finding of several nodes once (its message ends with the nodes it was found on),
    errors first within a line, at most MAX_ERRORS errors and MAX_WARNINGS warnings
    (then one line with the count left out).  Never raises."""
    merged: dict[tuple[object, ...], tuple[Diagnostic, list[str]]] = {}
    for node in sorted(directory, key=lambda n: n.name):
        try:
            found = compile_node(policy, node, directory).diagnostics
        except SpdError as exc:
            found = exc.diagnostics
        for d in found:
            key = (d.filename, d.line, d.col, d.severity, d.message)
            names = merged.setdefault(key, (d, []))[1]
            if not names or names[-1] != node.name:  # one node may find it several times
                names.append(node.name)
    out = [
        dataclasses.replace(d, message=f"{d.message} ({_on(nodes, len(directory))})")
        for d, nodes in merged.values()
    ]
    out.sort(key=lambda d: (d.filename, d.line, d.col, 0 if d.is_error else 1))
    return _capped(out)


def _on(nodes: list[str], total: int) -> str:
    if len(nodes) == 1:
        return f"on node {nodes[0]}"
    if len(nodes) == total and total > 2:
        return f"on all {total} nodes"
    shown = ", ".join(nodes[:MAX_NODES_LISTED])
    more = len(nodes) - MAX_NODES_LISTED
    return f"on nodes {shown}" + (f" and {more} more" if more > 0 else "")


def _capped(found: list[Diagnostic]) -> list[Diagnostic]:
    errors = [d for d in found if d.is_error]
    warnings = [d for d in found if not d.is_error]
    out = errors[:MAX_ERRORS] + warnings[:MAX_WARNINGS]
    out.sort(key=lambda d: (d.filename, d.line, d.col, 0 if d.is_error else 1))
    for kept, limit, severity in ((errors, MAX_ERRORS, Severity.ERROR),
                                  (warnings, MAX_WARNINGS, Severity.WARNING)):  # fmt: skip
        if len(kept) > limit:
            first = kept[limit]
            out.append(
                dataclasses.replace(
                    first,
                    message=f"{len(kept) - limit} more per-node {severity.value}s from here "
                    f"on not shown (at most {limit} are listed)",
                    hint="fix the ones above and check again",
                )
            )
    return out
