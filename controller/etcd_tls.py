"""TLS between the controller and etcd, client side (issue #12; docs/security.md).

* :class:`EtcdClientTls`: what the controller presents and trusts on the etcd link —
  the CA that signed the etcd members' certificates (``--etcd-cacert``), the client
  certificate chain and its key (``--etcd-cert``, ``--etcd-key``; the names etcdctl
  uses), and the one server name checked in every member's certificate.
  :func:`load_client_tls` reads them from files with the checks that name the file and
  the fix: a missing or unreadable file, a key others can read (the ``chmod``), a
  certificate that does not belong to the key, an expired certificate, one etcd would
  refuse as a client certificate (no clientAuth usage).
* :func:`probe`: one TLS connection to one member, the way gRPC makes it (ALPN h2),
  then the HTTP/2 preface: it tells *which side refused*.  gRPC itself reports a
  refused client certificate only as "Unwrap failed (TSI_DATA_CORRUPTED)", so
  :class:`~controller.etcd_store.EtcdStore` runs this probe at connection time and puts
  its answer in the error.

The key is never in a ``repr``, a log line or an error message.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from controller.ca import CaError, load_private_key, read_private_file, read_public_file

__all__ = ["EtcdClientTls", "EtcdTlsError", "load_client_tls", "probe", "public_key_der"]

#: The HTTP/2 client preface and an empty SETTINGS frame (RFC 9113 3.4): etcd's gRPC
#: listener answers with its own SETTINGS frame once it has accepted the connection.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


class EtcdTlsError(CaError):
    """An etcd TLS credential file that cannot be used; the message names the file, the
    flag and the fix."""


@dataclass(frozen=True, slots=True)
class EtcdClientTls:
    """The controller's side of TLS to etcd.  ``cert_file``/``key_file`` are None when
    no client certificate is presented (an etcd without ``--client-cert-auth``)."""

    ca_file: Path
    ca_pem: bytes
    cert_file: Path | None = None
    cert_pem: bytes | None = None
    key_file: Path | None = None
    key_pem: bytes | None = field(default=None, repr=False)
    #: the name checked in every member's certificate (None: the endpoints' host)
    server_name: str | None = None

    @property
    def client_auth(self) -> bool:
        return self.cert_pem is not None

    def ssl_context(self) -> ssl.SSLContext:
        """An :mod:`ssl` context with the same trust and client certificate (for
        :func:`probe` and etcd's HTTP health endpoint)."""
        ctx = ssl.create_default_context(cadata=self.ca_pem.decode("ascii", "replace"))
        if self.cert_file is not None and self.key_file is not None:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def load_client_tls(
    cacert: Path,
    cert: Path | None = None,
    key: Path | None = None,
    *,
    server_name: str | None = None,
    flags: tuple[str, str, str] = ("--etcd-cacert", "--etcd-cert", "--etcd-key"),
) -> EtcdClientTls:
    """Read and check the files (see the module docstring); ``flags`` name them in
    errors (the command-line flags, or the state directory's role for the private
    etcd)."""
    ca_flag, cert_flag, key_flag = flags
    if (cert is None) != (key is None):
        raise EtcdTlsError(
            f"{cert_flag} and {key_flag} go together: the client certificate and its key"
        )
    ca_pem = _read_public(cacert, f"etcd CA certificate ({ca_flag})")
    try:
        cas = x509.load_pem_x509_certificates(ca_pem)
    except ValueError:
        raise EtcdTlsError(
            f"{cacert}: no PEM certificate in it ({ca_flag} takes the CA certificate that "
            "signed the etcd members' certificates, PEM)"
        ) from None
    now = dt.datetime.now(dt.UTC)
    for ca in cas:
        if ca.not_valid_after_utc <= now:
            raise EtcdTlsError(
                f"{cacert}: the CA certificate '{_subject(ca)}' expired on "
                f"{ca.not_valid_after_utc:%Y-%m-%d} ({ca_flag}): get the etcd cluster's "
                "current CA certificate"
            )
    if cert is None or key is None:
        return EtcdClientTls(cacert, ca_pem, server_name=server_name)
    cert_pem = _read_public(cert, f"etcd client certificate ({cert_flag})")
    try:
        leaf = x509.load_pem_x509_certificates(cert_pem)[0]
    except ValueError:
        raise EtcdTlsError(
            f"{cert}: no PEM certificate in it ({cert_flag} takes the client certificate, "
            "then its intermediates, PEM)"
        ) from None
    try:
        key_data = read_private_file(key, f"etcd client key ({key_flag})")
    except CaError as exc:
        raise EtcdTlsError(str(exc)) from None
    try:
        private = load_private_key(key_data, where=f"{key} ({key_flag})")
    except CaError as exc:
        raise EtcdTlsError(str(exc)) from None
    if public_key_der(private.public_key()) != public_key_der(leaf.public_key()):
        raise EtcdTlsError(
            f"{key} ({key_flag}) is not the key of the certificate in {cert} ({cert_flag}): "
            "give the key the certificate was issued for"
        )
    if leaf.not_valid_after_utc <= now:
        raise EtcdTlsError(
            f"{cert} ({cert_flag}) expired on {leaf.not_valid_after_utc:%Y-%m-%d}: issue a "
            "new etcd client certificate"
        )
    if leaf.not_valid_before_utc > now:
        raise EtcdTlsError(
            f"{cert} ({cert_flag}) is not valid before "
            f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC: check this host's clock"
        )
    try:
        ekus = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        ekus = None
    if ekus is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in ekus:
        raise EtcdTlsError(
            f"{cert} ({cert_flag}): its extendedKeyUsage lacks clientAuth, so etcd refuses "
            "it as a client certificate; issue one for client authentication"
        )
    return EtcdClientTls(cacert, ca_pem, cert, cert_pem, key, key_data, server_name)


def _read_public(path: Path, what: str) -> bytes:
    try:
        return read_public_file(path, what)
    except CaError as exc:
        raise EtcdTlsError(str(exc)) from None


def public_key_der(public_key: object) -> bytes:
    """The DER SubjectPublicKeyInfo of a public key (b"" for an unknown type): to
    compare a certificate's key with a private key's."""
    encode = getattr(public_key, "public_bytes", None)
    if encode is None:
        return b""
    data = encode(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return bytes(data)


def _subject(cert: x509.Certificate) -> str:
    try:
        return cert.subject.rfc4514_string()[:120]
    except ValueError:
        return "?"


async def probe(endpoint: str, tls: EtcdClientTls, server_name: str, timeout: float) -> str | None:
    """Connect to one member (``ip:port``) over TLS as the controller does; None when
    both sides accepted each other, else a sentence saying which side refused and the
    fix."""
    host, _, port_text = endpoint.rpartition(":")
    try:
        ctx = tls.ssl_context()
    except (ssl.SSLError, OSError) as exc:
        return f"the TLS files cannot be loaded ({exc.__class__.__name__}: {exc.strerror or exc})"
    ctx.set_alpn_protocols(["h2"])
    cert_hint = (
        f"the client certificate {tls.cert_file}" if tls.client_auth else "no client certificate"
    )
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            try:
                reader, writer = await asyncio.open_connection(host, int(port_text))
            except OSError as exc:
                return f"no connection ({exc.strerror or exc}): is etcd running there?"
            try:
                await writer.start_tls(ctx, server_hostname=server_name)
            except ssl.SSLCertVerificationError as exc:
                return (
                    f"the controller refused etcd's certificate ({exc.verify_message}): "
                    + _verify_fix(exc, tls, server_name)
                )
            except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError) as exc:
                reason = _reason(exc)
                if any(alert in reason for alert in _CLIENT_CERT_ALERTS):
                    return _client_refused(tls, reason)
                return (
                    f"the TLS handshake failed ({reason}): does it serve TLS? an http:// "
                    "etcd needs --etcd-plaintext"
                )
            try:
                writer.write(_H2_PREFACE)
                await writer.drain()
                answer = await reader.readexactly(9)
            except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError) as exc:
                # TLS 1.3: the server checks the client certificate after the client
                # has finished its handshake, and refuses with an alert on the next read
                return _client_refused(tls, _reason(exc))
            if answer[3:4] != b"\x04":
                return f"it does not answer as etcd's gRPC listener (sent {cert_hint})"
            return None
    except TimeoutError:
        return f"no TLS answer within {timeout:.1f}s"
    except OSError as exc:
        return f"the connection failed ({exc.strerror or exc})"
    finally:
        if writer is not None:
            writer.transport.abort()  # a probe: no TLS close exchange to wait for


#: OpenSSL's names of the alerts a server sends when it refuses the client certificate
_CLIENT_CERT_ALERTS = (
    "ALERT_BAD_CERTIFICATE",
    "ALERT_CERTIFICATE_REQUIRED",
    "ALERT_UNKNOWN_CA",
    "ALERT_UNSUPPORTED_CERTIFICATE",
    "ALERT_CERTIFICATE_EXPIRED",
    "ALERT_CERTIFICATE_REVOKED",
    "ALERT_HANDSHAKE_FAILURE",
)


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    if reason:
        return str(reason)
    text = str(exc)
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


def _client_refused(tls: EtcdClientTls, reason: str) -> str:
    if tls.client_auth:
        return (
            f"etcd refused the controller's client certificate {tls.cert_file} ({reason}): "
            "etcd's --trusted-ca-file must hold the CA that issued it"
        )
    return (
        f"etcd requires a client certificate ({reason}) and the controller has none: "
        "give --etcd-cert and --etcd-key"
    )


def _verify_fix(exc: ssl.SSLCertVerificationError, tls: EtcdClientTls, server_name: str) -> str:
    message = str(exc.verify_message or "")
    if "mismatch" in message or "not valid for" in message:
        return (
            f"its certificate does not name {server_name!r}; give --etcd-server-name with a "
            "name (or address) every member's certificate carries"
        )
    if "expired" in message:
        return "renew the etcd member's certificate"
    return f"is {tls.ca_file} (--etcd-cacert) the CA that signed the etcd members' certificates?"
