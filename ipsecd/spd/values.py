"""Small value parsers shared by both dialects: addresses, ports, protocols, keys, time."""

from __future__ import annotations

import functools
import ipaddress
import re

from .model import Address, Prefix

__all__ = [
    "PROTOCOLS",
    "SERVICES",
    "Problem",
    "network",
    "parse_address",
    "parse_duration",
    "parse_hex_key",
    "parse_int",
    "parse_port",
    "parse_prefix",
    "parse_protocol",
]


_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(r"\.".join([_OCTET] * 4))
_IPV4_PREFIX = re.compile(r"\.".join([_OCTET] * 4) + r"(?:/([0-9]{1,2}))?")


class Problem(Exception):
    """A value did not parse; the caller turns it into a located diagnostic."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


# The /etc/protocols names setkey(8) users write, plus its own icmp6 and ip4.
PROTOCOLS: dict[str, int] = {
    "any": 0,
    "ip": 0,
    "icmp": 1,
    "igmp": 2,
    "ip4": 4,
    "ipip": 4,
    "ipencap": 4,
    "tcp": 6,
    "udp": 17,
    "ipv6": 41,
    "gre": 47,
    "esp": 50,
    "ah": 51,
    "icmp6": 58,
    "ipv6-icmp": 58,
    "ospf": 89,
    "pim": 103,
    "ipcomp": 108,
    "vrrp": 112,
    "sctp": 132,
    "udplite": 136,
}

PORT_PROTOCOLS = frozenset({6, 17, 132, 136})
ICMP_PROTOCOLS = frozenset({1, 58})

# Service names accepted in ``[port]`` and ``port NAME`` (a fixed table: no lookups).
SERVICES: dict[str, int] = {
    "ftp-data": 20,
    "ftp": 21,
    "ssh": 22,
    "telnet": 23,
    "smtp": 25,
    "domain": 53,
    "dns": 53,
    "http": 80,
    "kerberos": 88,
    "pop3": 110,
    "ntp": 123,
    "imap": 143,
    "snmp": 161,
    "ldap": 389,
    "https": 443,
    "isakmp": 500,
    "syslog": 514,
    "ipsec-nat-t": 4500,
    "submission": 587,
    "ldaps": 636,
    "imaps": 993,
    "pop3s": 995,
    "mysql": 3306,
    "postgresql": 5432,
    "postgres": 5432,
    "etcd": 2379,
    "bgp": 179,
}


def parse_int(text: str, what: str, lo: int, hi: int) -> int:
    """Decimal or 0x-hex integer in [lo, hi]."""
    try:
        value = int(text, 16) if text.lower().startswith("0x") else int(text, 10)
    except ValueError:
        raise Problem(f"{what} must be a number, not '{text}'") from None
    if not lo <= value <= hi:
        raise Problem(f"{what} {value} is out of range", f"use a value from {lo} to {hi}")
    return value


def parse_address(text: str) -> Address:
    if "%" in text:
        raise Problem(
            f"scoped address '{text}' is not supported",
            "drop the %zone suffix; link-local policies are not cluster-wide",
        )
    try:
        return _cached_address(text)
    except ValueError:
        raise Problem(*_bad_address(text)) from None


def _bad_address(text: str) -> tuple[str, str]:
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9.-]*", text):
        return (
            f"'{text}' is not an IP address",
            "write a numeric address (host names are not resolved), or $macro",
        )
    return f"'{text}' is not a valid IP address", ""


@functools.lru_cache(maxsize=65536)
def parse_prefix(text: str) -> Prefix:
    """``address`` or ``address/len``; host bits are allowed and cleared (as setkey)."""
    m = _IPV4_PREFIX.fullmatch(text)
    if m is not None:  # fast path: dotted quad with an optional /len
        a, b, c, d, plen_text = m.groups()
        bits = 32 if plen_text is None else int(plen_text)
        if bits <= 32:
            value = (int(a) << 24) | (int(b) << 16) | (int(c) << 8) | int(d)
            value &= (0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF
            return ipaddress.IPv4Network((value, bits))
    addr_text, _, plen = text.partition("/")
    addr = parse_address(addr_text)
    maxlen = addr.max_prefixlen
    if not plen:
        return network(addr, maxlen)
    if not plen.isdigit() or int(plen) > maxlen:
        raise Problem(f"bad prefix length '/{plen}'", f"use /0 to /{maxlen} for this address")
    return network(addr, int(plen))


def parse_port(text: str) -> int:
    """A port number, a service name or ``any`` (0)."""
    if text == "any" or text == "*":
        return 0
    if text.isdigit():
        return parse_int(text, "port", 0, 65535)
    if text in SERVICES:
        return SERVICES[text]
    raise Problem(
        f"unknown port '{text}'",
        "use a number (1-65535), 'any', or one of: " + ", ".join(sorted(SERVICES)[:8]) + ", ...",
    )


def parse_protocol(text: str) -> int:
    if text.isdigit():
        return parse_int(text, "protocol number", 0, 255)
    if text in PROTOCOLS:
        return PROTOCOLS[text]
    raise Problem(
        f"unknown upper-layer protocol '{text}'",
        "use tcp, udp, icmp, icmp6, sctp, gre, any, or a protocol number 0-255",
    )


_DURATION = re.compile(r"(\d+)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """``90``, ``30s``, ``5m``, ``8h``, ``1d`` -> seconds."""
    m = _DURATION.fullmatch(text)
    if not m:
        raise Problem(f"bad duration '{text}'", "write seconds, or a number with s, m, h or d")
    return int(m.group(1)) * _UNITS[m.group(2)]


def parse_hex_key(text: str) -> bytes:
    """``0x...`` -> bytes; an odd digit count gets a leading zero nibble (as setkey)."""
    digits = text[2:]
    if not digits or not re.fullmatch(r"[0-9A-Fa-f]+", digits):
        raise Problem("a key must be 0x followed by hex digits, or a quoted string")
    if len(digits) % 2:
        digits = "0" + digits
    return bytes.fromhex(digits)


@functools.lru_cache(maxsize=65536)
def _cached_address(text: str) -> Address:
    m = _IPV4.fullmatch(text)
    if m is not None:
        a, b, c, d = m.groups()
        return ipaddress.IPv4Address((int(a) << 24) | (int(b) << 16) | (int(c) << 8) | int(d))
    return ipaddress.ip_address(text)


@functools.lru_cache(maxsize=65536)
def network(addr: Address, plen: int) -> Prefix:
    """The network ``addr/plen`` with host bits cleared (cached: nodes repeat a lot)."""
    bits = addr.max_prefixlen
    value = int(addr) & (((1 << bits) - 1) ^ ((1 << (bits - plen)) - 1))
    if addr.version == 4:
        return ipaddress.IPv4Network((value, plen))
    return ipaddress.IPv6Network((value, plen))
