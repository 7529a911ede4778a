"""The agent's certificate material for ``auth certificate`` (docs/spd.md "connection",
docs/operations.md "Certificates").

* The node's own: ``--cert`` (PEM chain, the node certificate first), ``--key`` (PEM
  private key, mode 0600), ``--ca`` (PEM, the cluster CA certificates) and ``--crl``
  (PEM or DER CRLs, optional).  Connections without options use them.
* The files ``auth certificate ca PATH cert PATH key PATH`` name, for peers outside
  the cluster.

Files are read when a policy is applied and again by :meth:`Credentials.refresh`
(the agent calls it periodically and on SIGHUP): a file that changed (size, mtime or
inode) is read again.  New certificates and keys take effect for IKE SAs made from
then on (nothing established is dropped); new CA files and CRLs replace the store of
the shared :class:`~ipsecd.ike.auth.Trust` in place, so every later IKE_AUTH sees them,
and the supervisor re-checks established peers against them (a revoked peer's IKE SA
is deleted).  A file that cannot be used is reported per connection with the path and
the fix; the connection is unusable (its traffic stays blocked, never in clear).

The same ``--cert``/``--key``/``--ca`` are the agent's mTLS credentials for the
controller stream (:func:`controller_credentials`, docs/security.md): the certificate
must carry the role ``node`` and this node's name (:mod:`ipsecd.roles`), as
``ipsecd-controller issue --role node`` makes it.
"""

from __future__ import annotations

import datetime as dt
import logging
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from ipsecd.ike import IkeLocalError
from ipsecd.ike.auth import Trust
from ipsecd.ike.pki import (
    LocalCredentials,
    TrustStore,
    load_pem_certificates,
    load_pem_crls,
)
from ipsecd.roles import Role, RoleError, role_of

__all__ = ["CredentialError", "Credentials", "NodeFiles", "controller_credentials"]

log = logging.getLogger("ipsecd.agent")

#: Largest certificate, key or CRL file read (a CRL of a big CA fits many times).
MAX_FILE = 4 * 1024 * 1024


class CredentialError(Exception):
    """A certificate file that cannot be used (the message names the file and the fix)."""


@dataclass(frozen=True, slots=True)
class NodeFiles:
    """The node's own certificate files (agent command line)."""

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    crls: tuple[Path, ...] = ()


def _stamp(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _read(path: Path, *, secret: bool = False) -> bytes:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise CredentialError(f"{path}: no such file") from None
    except OSError as exc:
        raise CredentialError(f"{path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise CredentialError(f"{path}: not a regular file")
    if st.st_size > MAX_FILE:
        raise CredentialError(f"{path}: {st.st_size} bytes, more than {MAX_FILE} accepted")
    if secret and st.st_mode & 0o077:
        raise CredentialError(
            f"{path}: private key file is mode {st.st_mode & 0o777:o}: run chmod 600 {path}"
        )
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CredentialError(f"{path}: {exc.strerror}") from None


class Credentials:
    """Loads and caches certificate material (see the module doc)."""

    def __init__(self, node: NodeFiles | None = None) -> None:
        self.node = node or NodeFiles()
        #: (cert path, key path) -> (stamps, credentials)
        self._local: dict[tuple[Path, Path], tuple[tuple[object, ...], LocalCredentials]] = {}
        #: CA path -> (stamps of CA and CRL files, Trust)
        self._trust: dict[Path, tuple[tuple[object, ...], Trust]] = {}

    # ------------------------------------------------------------------ lookups
    def local(self, cert: str | None, key: str | None) -> LocalCredentials:
        """Our certificate chain and key: the files named, or the node's own."""
        if cert is not None and key is not None:
            paths = (Path(cert), Path(key))
        elif self.node.cert is not None and self.node.key is not None:
            paths = (self.node.cert, self.node.key)
        else:
            raise CredentialError(
                "this node has no certificate: start the agent with --cert FILE --key FILE "
                "(the node certificate from the cluster CA), or use 'auth psk' on this "
                "connection"
            )
        stamps = tuple(self._stamp_or_fail(p) for p in paths)
        cached = self._local.get(paths)
        if cached is not None and cached[0] == stamps:
            return cached[1]
        cert_pem, key_pem = _read(paths[0]), _read(paths[1], secret=True)
        try:
            made = LocalCredentials.from_pem(cert_pem, key_pem)
        except IkeLocalError as exc:
            raise CredentialError(f"{paths[0]} / {paths[1]}: {exc}") from None
        self._local[paths] = (stamps, made)
        return made

    def trust(self, ca: str | None) -> Trust:
        """The trust store of a CA file (with the node's CRLs), or the cluster CA's."""
        path = Path(ca) if ca is not None else self.node.ca
        if path is None:
            raise CredentialError(
                "this node knows no cluster CA: start the agent with --ca FILE (the cluster "
                "CA certificate), or name one with 'auth certificate ca PATH'"
            )
        stamps = self._stamps(path)
        cached = self._trust.get(path)
        if cached is not None and cached[0] == stamps:
            return cached[1]
        store = self._load_store(path)
        if cached is not None:
            cached[1].update(store)  # every connection sharing it sees the new store
            trust = cached[1]
        else:
            trust = Trust(store)
        self._trust[path] = (stamps, trust)
        return trust

    # ------------------------------------------------------------------ refresh
    def refresh(self) -> list[str]:
        """Re-read CA and CRL files that changed; returns what changed, for the log.
        Stores whose files became unusable keep their last good content."""
        changed = []
        for path, (stamps, trust) in list(self._trust.items()):
            try:
                now = self._stamps(path)
                if now == stamps:
                    continue
                trust.update(self._load_store(path))
            except CredentialError as exc:
                log.error("%s; the previous CA and CRLs stay in use", exc)
                continue
            self._trust[path] = (now, trust)
            changed.append(f"{path}: {trust!r}")
        return changed

    def local_changed(self) -> bool:
        """Whether a certificate or key file in use changed since it was read (a
        renewal): the caller applies the policy again, so new IKE SAs use it."""
        for paths, (stamps, _made) in list(self._local.items()):
            try:
                now = tuple(_stamp(p) for p in paths)
            except OSError:
                continue
            if now != stamps:
                return True
        return False

    def trusts(self) -> list[Trust]:
        return [t for _, t in self._trust.values()]

    # ------------------------------------------------------------------ helpers
    def _stamp_or_fail(self, path: Path) -> tuple[int, int, int]:
        try:
            return _stamp(path)
        except FileNotFoundError:
            raise CredentialError(f"{path}: no such file") from None
        except OSError as exc:
            raise CredentialError(f"{path}: {exc.strerror}") from None

    def _stamps(self, ca: Path) -> tuple[object, ...]:
        out: list[object] = [self._stamp_or_fail(ca)]
        for crl in self.node.crls:
            try:
                out.append(_stamp(crl))
            except OSError:
                out.append(None)  # a CRL not (yet) there: checked again next time
        return tuple(out)

    def _load_store(self, ca: Path) -> TrustStore:
        try:
            anchors = load_pem_certificates(_read(ca), where=str(ca))
        except IkeLocalError as exc:
            raise CredentialError(f"{ca}: {exc}") from None
        if not anchors:
            raise CredentialError(f"{ca}: no certificate in it (PEM expected)")
        crls: list[x509.CertificateRevocationList] = []
        for path in self.node.crls:
            if not path.exists():
                log.warning("%s: CRL file missing; no revocation from it until it appears", path)
                continue
            try:
                crls += load_pem_crls(_read(path), where=str(path))
            except (IkeLocalError, CredentialError) as exc:
                raise CredentialError(f"{path}: {exc}") from None
        return TrustStore(tuple(anchors), tuple(crls))


def controller_credentials(node: NodeFiles, name: str) -> Any:
    """``grpc.ChannelCredentials`` for mTLS to the controller from the node's own files,
    after checking what can be checked here: all three files given and usable, the key
    is the certificate's, the certificate is valid now and is node ``name``'s."""
    if node.cert is None or node.key is None or node.ca is None:
        raise CredentialError(
            "the controller stream is mTLS: start the agent with --cert FILE --key FILE "
            "--ca FILE (this node's certificate, e.g. from `ipsecd-controller issue --role "
            "node`), or with --insecure for plaintext gRPC on a trusted network"
        )
    cert_pem, key_pem, ca_pem = _read(node.cert), _read(node.key, secret=True), _read(node.ca)
    try:
        local = LocalCredentials.from_pem(cert_pem, key_pem, where=f"{node.cert} / {node.key}")
        load_pem_certificates(ca_pem, where=str(node.ca))
    except IkeLocalError as exc:
        raise CredentialError(str(exc)) from None
    cert = local.certificate
    try:
        ident = role_of(cert)
    except RoleError as exc:
        raise CredentialError(f"{node.cert}: {exc}") from None
    if ident.role != Role.NODE or ident.name != name:
        raise CredentialError(
            f"{node.cert} is the certificate of {ident}, not of node {name!r}: give this "
            "node's own certificate, or --node with the name it was issued for"
        )
    now = dt.datetime.now(dt.UTC)
    if cert.not_valid_after_utc < now:
        raise CredentialError(
            f"{node.cert} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC: renew it "
            f"(ipsecd-controller issue --role node --name {name} ...)"
        )
    import grpc

    return grpc.ssl_channel_credentials(
        root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem
    )
