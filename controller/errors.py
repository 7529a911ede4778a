"""Typed controller errors.  Each names the place and the fix.

They are raised by the store, the revision repository and the registry, and mapped to
gRPC status codes in one place (:data:`controller.server.STATUS_OF`); ``ipsecctl``
maps status codes to exit codes (:mod:`controller.cli_remote`).
"""

from __future__ import annotations


class ControllerError(Exception):
    """Base class of every error the controller reports to a client."""


class StoreUnavailable(ControllerError):
    """etcd did not answer (down, partitioned, or too slow)."""


class StoreCompacted(ControllerError):
    """A watch asked for history that etcd has compacted away; reload and watch again."""


class ConflictError(ControllerError):
    """The base revision of a push/rollback is no longer current (someone pushed first)."""


class RevisionNotFound(ControllerError):
    """No such policy revision (or no policy pushed yet)."""


class PermissionDenied(ControllerError):
    """The caller may not do this (e.g. see secrets)."""


class ValidatorUnavailable(ControllerError):
    """The SPD compiler (ipsecd.spd) cannot be imported: the installation is incomplete."""


class StoreOutcomeUnknown(StoreUnavailable):
    """A write was sent, etcd stopped answering, and whether it was applied could not be
    read back before the deadline.  It may or may not have happened."""


class StoreRequestTooLarge(ControllerError):
    """etcd refused a request as larger than its ``--max-request-bytes``."""


class InputTooLarge(ControllerError):
    """A request field (policy text, comment, ...) is over the controller's bound."""


class InvalidArgument(ControllerError):
    """A request field is wrong (e.g. a bad secret name); the message says how."""


class SecretsUnavailable(ControllerError):
    """The controller cannot open its secrets (no envelope key, or another one)."""


class NotAuthenticated(ControllerError):
    """A credential in the request (a join token) is not valid: unknown, wrong secret,
    expired or used up."""


class BadRequest(ControllerError):
    """A malformed request (e.g. a certificate request that is not acceptable)."""


class NotFound(ControllerError):
    """No such object (a node, a join token, a secret)."""


class NotPossibleHere(ControllerError):
    """This replica cannot do it (e.g. it holds no CA key); the message says where."""
