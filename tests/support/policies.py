"""SPD texts for controller tests (setkey-style statements are valid SPD as they are)."""

from __future__ import annotations


def policy(n: int) -> str:
    """A distinct valid policy per ``n``."""
    return (
        f"# revision text {n}\n"
        f"spdadd 10.{n % 250}.1.0/24 10.{n % 250}.2.0/24 any -P out ipsec "
        "esp/tunnel/192.0.2.1-192.0.2.2/require;\n"
    )


# Two errors on lines 2 and 3 (unknown statement, bad prefix).
INVALID = (
    "# broken on purpose\n"
    "frobnicate everything;\n"
    "spdadd 10.0.1.0/99 10.0.2.0/24 any -P out ipsec esp/tunnel/192.0.2.1-192.0.2.2/require;\n"
)
INVALID_LINES = (2, 3)

SECRET_KEY = "0x3f1a9c5e7b2d4f60a8c1e3b5d7f9a2c4d6e8f0a1"  # AES-128-GCM key + salt

# A literal key: only accepted from a file with mode 0600.
WITH_KEY = (
    "# manual SA with a literal key\n"
    f"add 192.0.2.1 192.0.2.2 esp 0x1001 -E aes-gcm-16 {SECRET_KEY};\n"
    "spdadd 192.0.2.1 192.0.2.2 any -P out ipsec esp/transport//require;\n"
)
