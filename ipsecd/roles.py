"""Cluster roles in certificates (docs/security.md "Roles"): shared by the controller,
which issues and checks them (controller/ca.py, controller/authz.py), and the agent,
which checks that its certificate is its node's before it connects.

A certificate of the cluster CA speaks for exactly one role and name, written in
exactly one place: one subjectAltName URI ``ipsecd://role/ROLE/NAME``, ROLE one of
``admin``, ``viewer``, ``node``, ``controller``.  The subject is never used to decide
anything.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from cryptography import x509

__all__ = [
    "ROLE_URI_PREFIX",
    "Role",
    "RoleError",
    "RoleIdentity",
    "parse_role_uri",
    "role_of",
    "valid_name",
]

#: The scheme and authority of the role URI: ``ipsecd://role/ROLE/NAME``.
ROLE_URI_PREFIX = "ipsecd://role/"

#: Names of admins, viewers, nodes and controllers: what the SPD's node names allow
#: (docs/spd.md) plus ``@``, at most a DNS name long.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,252}")


class RoleError(ValueError):
    """A certificate with no usable role; the message says why and names the
    certificate (subject and serial), never key material."""


class Role(enum.StrEnum):
    ADMIN = "admin"
    VIEWER = "viewer"
    NODE = "node"
    CONTROLLER = "controller"


@dataclass(frozen=True, slots=True)
class RoleIdentity:
    """Who a certificate speaks for: its role and name (``admin/alice``)."""

    role: Role
    name: str

    @property
    def uri(self) -> str:
        return f"{ROLE_URI_PREFIX}{self.role.value}/{self.name}"

    def __str__(self) -> str:
        return f"{self.role.value}/{self.name}"


def valid_name(name: str) -> bool:
    """Letters, digits and ``_ . @ -``, at most 253, not starting with ``. @ -``."""
    return bool(_NAME.fullmatch(name))


def parse_role_uri(uri: str) -> RoleIdentity | None:
    """The role and name of an ``ipsecd://role/ROLE/NAME`` URI, or None."""
    if not uri.startswith(ROLE_URI_PREFIX):
        return None
    role_text, sep, name = uri[len(ROLE_URI_PREFIX) :].partition("/")
    if not sep or not valid_name(name):
        return None
    try:
        role = Role(role_text)
    except ValueError:
        return None
    return RoleIdentity(role, name)


def _describe(cert: x509.Certificate) -> str:
    try:
        subject = cert.subject.rfc4514_string()
    except ValueError:
        subject = "?"
    return f"certificate '{subject[:120]}' (serial {cert.serial_number:#x})"


def role_of(cert: x509.Certificate) -> RoleIdentity:
    """The certificate's role (its one ``ipsecd://role/...`` subjectAltName URI), or
    :class:`RoleError` saying why it has none."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise RoleError(
            f"{_describe(cert)} has no subjectAltName, so no ipsecd role; issue one with "
            "`ipsecd-controller issue`"
        ) from None
    except ValueError:
        raise RoleError(f"{_describe(cert)}: its extensions cannot be parsed") from None
    ours = [
        u
        for u in sans.get_values_for_type(x509.UniformResourceIdentifier)
        if u.startswith(ROLE_URI_PREFIX)
    ]
    if not ours:
        raise RoleError(
            f"{_describe(cert)} names no ipsecd role (no subjectAltName URI "
            f"{ROLE_URI_PREFIX}ROLE/NAME); issue one with `ipsecd-controller issue`"
        )
    if len(ours) > 1:
        raise RoleError(f"{_describe(cert)} names {len(ours)} ipsecd roles; exactly one is allowed")
    parsed = parse_role_uri(ours[0])
    if parsed is None:
        raise RoleError(
            f"{_describe(cert)}: its role URI {ours[0][:120]!r} is not "
            f"{ROLE_URI_PREFIX}(admin|viewer|node|controller)/NAME"
        )
    return parsed
