"""Joining a cluster with a token, and renewing the node certificate (issue #12;
docs/security.md "Joining a node", docs/operations.md "Joining nodes").

``ipsecd --controller HOST:PORT --node NAME --join-file FILE`` (or ``--join TOKEN``,
or ``$IPSECD_JOIN_TOKEN``) on a node that has no credentials yet:

1. the agent makes its key (ECDSA P-256) in its state directory (``node.key``, 0600);
2. it opens a TLS connection to the controller's join port (default: the controller's
   port + 1), trusting nothing, and reads the certificate chain the controller
   presents (``SSLSocket._sslobj.get_unverified_chain()``, Python 3.10+); a certificate
   of that chain must be a CA whose public key hashes to the token's pin, and the
   serving certificate must chain to it.  Otherwise it stops there: nothing of the
   token but the handshake (no secret) has been sent;
3. over gRPC, now verifying the controller against that CA (and the host name it
   dials), it calls Join with the token's ID and secret and a CSR (``CN=NAME``,
   ``DNS:NAME``, ``IP:`` each address);
4. it checks what comes back (the certificate is node ``NAME``'s, on its key, issued by
   the pinned CA; the CRL signed by it) and writes ``node.pem``, ``ca.pem`` and
   ``crl.pem`` next to the key.

From then on the agent runs as with ``--cert/--key/--ca/--crl`` naming those files;
a restart finds them and needs no token.

Renewal (:func:`renew`): over the agent's mTLS stream channel, a CSR with a new key;
the new key and certificate replace the old ones atomically (each file by rename,
both before anything else in the agent reads them).

The token's secret never appears in a log line, an error or a repr.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import itertools
import logging
import os
import socket
import ssl
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from ipsecd.jointoken import JoinToken, TokenFormatError, ca_pin
from ipsecd.roles import Role, RoleError, role_of
from ipsecd.v1 import join_pb2, join_pb2_grpc

from .credentials import NodeFiles

__all__ = [
    "ENV_TOKEN",
    "JoinError",
    "JoinedFiles",
    "crl_number_of",
    "fetch_pinned_ca",
    "join",
    "make_csr",
    "read_token",
    "renew",
    "renewal_due",
]

log = logging.getLogger("ipsecd.agent")

ENV_TOKEN = "IPSECD_JOIN_TOKEN"
RPC_TIMEOUT = 30.0
MAX_TOKEN_FILE = 4096
#: ssl's private constant for DER in ``_ssl.Certificate.public_bytes``
_ENCODING_DER: int = getattr(ssl, "_ssl").ENCODING_DER  # noqa: B009


class JoinError(Exception):
    """Joining or renewing failed; ``final`` when retrying cannot help (a refused
    token, a wrong pin, a bad answer).  The message names the fix, never the secret."""

    def __init__(self, message: str, *, final: bool = True) -> None:
        super().__init__(message)
        self.final = final


@dataclass(frozen=True, slots=True)
class JoinedFiles:
    """Where a joined node keeps its credentials: in its state directory."""

    state_dir: Path

    @property
    def cert(self) -> Path:
        return self.state_dir / "node.pem"

    @property
    def key(self) -> Path:
        return self.state_dir / "node.key"

    @property
    def ca(self) -> Path:
        return self.state_dir / "ca.pem"

    @property
    def crl(self) -> Path:
        return self.state_dir / "crl.pem"

    def present(self) -> bool:
        return self.cert.exists() and self.key.exists() and self.ca.exists()

    def node_files(self) -> NodeFiles:
        return NodeFiles(self.cert, self.key, self.ca, (self.crl,))


# --------------------------------------------------------------------------- the token


def read_token(
    *, text: str | None, file: str | None, environ: dict[str, str] | None = None
) -> JoinToken | None:
    """The join token from ``--join TEXT``, ``--join-file PATH`` (mode 0600) or
    ``$IPSECD_JOIN_TOKEN``, in that order; None when none is given.  ValueError (with
    the fix, never the token) when it cannot be used."""
    env = os.environ if environ is None else environ
    source = "--join"
    if text is None and file is not None:
        path = Path(file)
        try:
            st = path.stat()
        except OSError as exc:
            raise ValueError(f"--join-file {path}: {exc.strerror}") from None
        if st.st_mode & 0o077:
            raise ValueError(
                f"--join-file {path}: a join token is a secret and the file is mode "
                f"{stat.S_IMODE(st.st_mode):04o}: run chmod 600 {path}"
            )
        if st.st_size > MAX_TOKEN_FILE:
            raise ValueError(f"--join-file {path}: {st.st_size} bytes is not a join token")
        text = path.read_text(encoding="utf-8", errors="replace")
        source = f"--join-file {path}"
    elif text is None and env.get(ENV_TOKEN):
        text = env[ENV_TOKEN]
        source = f"${ENV_TOKEN}"
    if text is None:
        return None
    try:
        return JoinToken.parse(text)
    except TokenFormatError as exc:
        raise ValueError(f"{source}: {exc}") from None


# --------------------------------------------------------------------------- the pin


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        return host, int(port)
    except ValueError:
        raise JoinError(f"{address!r}: expected HOST:PORT") from None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except (x509.ExtensionNotFound, ValueError):
        return False


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _subject(cert: x509.Certificate) -> str:
    try:
        return cert.subject.rfc4514_string()[:120]
    except ValueError:
        return "?"


def check_pinned_chain(
    chain: Sequence[x509.Certificate], pin: str, where: str
) -> tuple[x509.Certificate, ...]:
    """The CA bundle (the pinned CA, then its issuers as presented) of a serving chain
    whose certificates chain, one by one, from the serving certificate to a CA whose
    public key hashes to ``pin``; :class:`JoinError` otherwise."""
    if not chain:
        raise JoinError(f"the controller at {where} presented no certificate")
    for i, cert in enumerate(chain):
        if ca_pin(cert) != pin:
            continue
        if not _is_ca(cert):
            raise JoinError(
                f"the certificate of {where} matching the token's pin ({_subject(cert)}) is "
                "not a CA certificate; nothing was sent"
            )
        if i == 0:
            raise JoinError(
                f"the controller at {where} serves with the CA certificate itself; it must "
                "serve with its own certificate (ipsecd-controller init)"
            )
        for lower, upper in itertools.pairwise(chain[: i + 1]):
            if not _signed_by(lower, upper):
                raise JoinError(
                    f"the chain presented by {where} is broken ({_subject(lower)} is not "
                    f"signed by {_subject(upper)}); nothing was sent"
                )
        return tuple(chain[i:])
    presented = "; ".join(f"{_subject(c)} (pin {ca_pin(c)})" for c in chain if _is_ca(c))
    raise JoinError(
        f"the controller at {where} presented no CA with the token's pin "
        f"(it presented: {presented or 'no CA certificate'}): the token is for another "
        "cluster, or something between here and the controller is not it; nothing was "
        "sent (get a token from this cluster: ipsecctl token create)"
    )


def fetch_pinned_ca(
    address: str, pin: str, *, timeout: float = 10.0
) -> tuple[x509.Certificate, ...]:
    """Blocking: a TLS handshake with ``address`` (verifying nothing), then
    :func:`check_pinned_chain` on the chain it presented.  Only the handshake goes out."""
    host, port = _split(address)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # nothing is trusted yet: the pin decides below
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=host or None) as tls,
        ):
            # Python 3.10+ (public in 3.13): the chain exactly as the server sent it
            sslobj: Any = getattr(tls, "_sslobj")  # noqa: B009
            presented = sslobj.get_unverified_chain() or []
            ders = [c.public_bytes(_ENCODING_DER) for c in presented]
    except (OSError, ssl.SSLError) as exc:
        raise JoinError(
            f"cannot reach the controller's join port at {address}: {exc} (is "
            "ipsecd-controller running with its join port, --join-listen? the port is the "
            "controller's + 1 unless --join-port says otherwise)",
            final=False,
        ) from None
    try:
        chain = [x509.load_der_x509_certificate(d) for d in ders]
    except ValueError:
        raise JoinError(f"the controller at {address} presented a malformed certificate") from None
    return check_pinned_chain(chain, pin, address)


# --------------------------------------------------------------------------- CSRs


def make_csr(key: ec.EllipticCurvePrivateKey, node: str, addresses: Sequence[str]) -> bytes:
    """A PKCS#10 request (DER): CN=node, subjectAltName DNS:node and IP:each address."""
    names: list[x509.GeneralName] = [x509.DNSName(node)]
    for a in dict.fromkeys(addresses):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(a)))
        except ValueError:
            continue
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node)]))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)


def crl_number_of(crl: x509.CertificateRevocationList) -> int:
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except (x509.ExtensionNotFound, ValueError):
        return 0


def check_crl(data: bytes, ca: Sequence[x509.Certificate]) -> x509.CertificateRevocationList:
    """A PEM CRL signed by one of ``ca``; :class:`JoinError` otherwise."""
    try:
        crl = x509.load_pem_x509_crl(data)
    except ValueError:
        raise JoinError("the CRL from the controller is not a PEM CRL") from None
    for cert in ca:
        key = cert.public_key()
        if crl.issuer == cert.subject and isinstance(
            key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
        ):
            try:
                if crl.is_signature_valid(key):
                    return crl
            except (ValueError, TypeError):
                continue
    raise JoinError("the CRL from the controller is not signed by the cluster CA")


def _check_issued(
    resp: join_pb2.NodeCredentials,
    key: ec.EllipticCurvePrivateKey,
    node: str,
    ca: Sequence[x509.Certificate],
) -> x509.Certificate:
    try:
        chain = x509.load_pem_x509_certificates(resp.certificate)
    except ValueError:
        raise JoinError("the controller's answer holds no PEM certificate") from None
    cert = chain[0]
    ours = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if (
        cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        != ours
    ):
        raise JoinError("the certificate from the controller is not on this node's key")
    try:
        ident = role_of(cert)
    except RoleError as exc:
        raise JoinError(f"the certificate from the controller: {exc}") from None
    if ident.role != Role.NODE or ident.name != node:
        raise JoinError(f"the controller issued a certificate for {ident}, not node/{node}")
    issuers = [*chain[1:], *ca]
    lower = cert
    for _ in range(len(issuers) + 1):
        if any(lower == c for c in ca):
            return cert
        upper = next((c for c in issuers if c.subject == lower.issuer and c != lower), None)
        if upper is None or not _signed_by(lower, upper):
            break
        lower = upper
    raise JoinError("the certificate from the controller does not chain to the pinned CA")


def _write(path: Path, data: bytes, mode: int) -> None:
    """Atomically: a temporary file with ``mode`` from the first byte, renamed."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _pem(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _install(
    files: JoinedFiles,
    key: ec.EllipticCurvePrivateKey,
    resp: join_pb2.NodeCredentials,
    ca: Sequence[x509.Certificate],
) -> None:
    """Key first, then the certificate (each atomically, no await in between), then the
    CA and the CRL (when it is not older than the one there)."""
    files.state_dir.mkdir(parents=True, exist_ok=True)
    _write(files.key, _key_pem(key), 0o600)
    _write(files.cert, resp.certificate, 0o644)
    _write(files.ca, _pem(ca), 0o644)
    if resp.crl:
        store_crl(files.crl, resp.crl, ca)


def store_crl(path: Path, data: bytes, ca: Sequence[x509.Certificate]) -> bool:
    """Write a CRL from the controller to ``path`` when it is signed by ``ca`` and its
    number is higher than the one there; True when written."""
    crl = check_crl(data, ca)
    number = crl_number_of(crl)
    try:
        have = crl_number_of(x509.load_pem_x509_crl(path.read_bytes()))
    except (OSError, ValueError):
        have = -1
    if number <= have:
        return False
    _write(path, data, 0o644)
    return True


def _rpc_error(exc: grpc.aio.AioRpcError, what: str, where: str) -> JoinError:
    code = exc.code()
    details = (exc.details() or code.name).splitlines()[0]
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return JoinError(
            f"{what}: the controller at {where} did not answer: {details}", final=False
        )
    return JoinError(f"{what} refused by the controller at {where} ({code.name}): {details}")


# --------------------------------------------------------------------------- join, renew


async def join(
    controllers: Sequence[str],
    join_port: int | None,
    node: str,
    addresses: Sequence[str],
    token: JoinToken,
    files: JoinedFiles,
) -> x509.Certificate:
    """Join (see the module docstring); tries each controller in turn.  Returns the
    node certificate; :class:`JoinError` (``final`` False: worth retrying later)."""
    last: JoinError | None = None
    for target in controllers:
        host, port = _split(target)
        where = f"{'[' + host + ']' if ':' in host else host}:{join_port or port + 1}"
        try:
            ca = await asyncio.to_thread(fetch_pinned_ca, where, token.pin)
        except JoinError as exc:
            if exc.final:
                raise
            last = exc
            continue
        key = ec.generate_private_key(ec.SECP256R1())
        csr = make_csr(key, node, addresses)
        creds = grpc.ssl_channel_credentials(root_certificates=_pem(ca))
        request = join_pb2.JoinRequest(
            token_id=token.id, token_secret=token.secret, node=node, csr=csr
        )
        try:
            async with grpc.aio.secure_channel(where, creds) as channel:
                resp = await join_pb2_grpc.JoinServiceStub(channel).Join(
                    request, timeout=RPC_TIMEOUT
                )
        except grpc.aio.AioRpcError as exc:
            err = _rpc_error(exc, f"joining as node {node!r} with token {token.id}", where)
            if err.final:
                raise err from None
            last = err
            continue
        cert = _check_issued(resp, key, node, ca)
        _install(files, key, resp, ca)
        log.warning(
            "joined the cluster as node %s with token %s: certificate serial %x valid until "
            "%s UTC, files in %s",
            node,
            token.id,
            cert.serial_number,
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M}",
            files.state_dir,
        )
        return cert
    assert last is not None
    raise last


def renewal_due(cert: x509.Certificate, fraction: float) -> float:
    """When (Unix time) ``fraction`` of the certificate's lifetime has passed."""
    start = cert.not_valid_before_utc.timestamp()
    end = cert.not_valid_after_utc.timestamp()
    return start + fraction * (end - start)


async def renew(
    channel: grpc.aio.Channel, node: str, addresses: Sequence[str], files: JoinedFiles
) -> x509.Certificate:
    """A new key and certificate over the stream's mTLS channel (node role, own name)."""
    try:
        ca = x509.load_pem_x509_certificates(files.ca.read_bytes())
    except (OSError, ValueError) as exc:
        raise JoinError(f"{files.ca}: cannot read the cluster CA: {exc}") from None
    key = ec.generate_private_key(ec.SECP256R1())
    csr = make_csr(key, node, addresses)
    try:
        resp = await join_pb2_grpc.JoinServiceStub(channel).Renew(
            join_pb2.RenewRequest(csr=csr), timeout=RPC_TIMEOUT
        )
    except grpc.aio.AioRpcError as exc:
        raise _rpc_error(exc, f"renewing node {node}'s certificate", "the stream's") from None
    cert = _check_issued(resp, key, node, ca)
    _install(files, key, resp, ca)
    return cert


def not_after(path: Path) -> dt.datetime | None:
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())[0].not_valid_after_utc
    except (OSError, ValueError):
        return None
