"""``/proc/net/xfrm_stat`` of a network namespace (CONFIG_XFRM_STATISTICS)."""

from __future__ import annotations

from .errors import XfrmUnsupported
from .netns import Netns, describe, run_in


def parse_xfrm_stat(text: str) -> dict[str, int]:
    """``XfrmInError   0`` lines → ``{"XfrmInError": 0, ...}``."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def xfrm_stat(netns: Netns = None) -> dict[str, int]:
    """Counters of ``netns``, read from /proc/thread-self/net inside it."""

    def read() -> str:
        with open("/proc/thread-self/net/xfrm_stat") as fh:
            return fh.read()

    try:
        return parse_xfrm_stat(run_in(netns, read))
    except FileNotFoundError as exc:
        raise XfrmUnsupported(
            f"no /proc/net/xfrm_stat in {describe(netns)}: kernel built without "
            "CONFIG_XFRM_STATISTICS"
        ) from exc
