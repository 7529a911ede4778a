"""ipsecctl's credential file (``admin.conf`` and what ``ipsecd-controller issue``
writes for admins and viewers; docs/operations.md "ipsecctl against a controller").

One JSON object, mode 0600 (it holds a private key)::

    {
      "kind": "ipsecctl-config",
      "version": 1,
      "controllers": ["10.0.0.1:7480", "10.0.0.2:7480"],
      "identity": "admin/admin",
      "ca": "-----BEGIN CERTIFICATE-----\\n...",
      "cert": "-----BEGIN CERTIFICATE-----\\n...",
      "key": "-----BEGIN PRIVATE KEY-----\\n..."
    }

``controllers``: the addresses ipsecctl dials (the first one unless ``--controller``
says otherwise); ``ca``: the cluster CA (the controller's serving certificate must
chain to it); ``cert``: the client certificate (then intermediates), whose role URI
(:mod:`ipsecd.roles`) the controller authorizes; ``key``: its private key (PEM,
unencrypted); ``identity`` is informational (the certificate decides).

Where ipsecctl looks (:func:`locate`): ``--config FILE``, else ``$IPSECCTL_CONFIG``,
else ``~/.config/ipsecctl/config``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from controller.ca import CaError, load_private_key, read_private_file
from ipsecd.roles import RoleError, RoleIdentity, role_of

__all__ = [
    "CONFIG_KIND",
    "DEFAULT_CONFIG",
    "ENV_CONFIG",
    "ClientConfig",
    "ConfigError",
    "load_config",
    "locate",
]

CONFIG_KIND = "ipsecctl-config"
ENV_CONFIG = "IPSECCTL_CONFIG"
DEFAULT_CONFIG = "~/.config/ipsecctl/config"
MAX_CONFIG_BYTES = 1024 * 1024


class ConfigError(Exception):
    """The config cannot be found or used; the message names the file and the fix."""


def _spki(key: object) -> bytes:
    public = getattr(key, "public_bytes", None)
    if public is None:
        return b""
    out: bytes = public(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return out


@dataclass(frozen=True, slots=True)
class ClientConfig:
    controllers: tuple[str, ...]
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    identity: str = ""
    source: str = ""

    def dumps(self) -> bytes:
        body = {
            "kind": CONFIG_KIND,
            "version": 1,
            "controllers": list(self.controllers),
            "identity": self.identity,
            "ca": self.ca_pem.decode(),
            "cert": self.cert_pem.decode(),
            "key": self.key_pem.decode(),
        }
        return (json.dumps(body, indent=2) + "\n").encode()

    @classmethod
    def loads(cls, data: bytes, *, where: str) -> ClientConfig:
        try:
            raw = json.loads(data)
        except ValueError:
            raise ConfigError(
                f"{where}: not an ipsecctl config (a JSON object written by "
                "`ipsecd-controller init` or `ipsecd-controller issue` expected)"
            ) from None
        if not isinstance(raw, dict) or raw.get("kind") != CONFIG_KIND:
            raise ConfigError(f'{where}: not an ipsecctl config ("kind": "{CONFIG_KIND}" missing)')
        if raw.get("version") != 1:
            raise ConfigError(
                f"{where}: config version {raw.get('version')!r}; this ipsecctl reads 1"
            )
        missing = [k for k in ("controllers", "ca", "cert", "key") if not raw.get(k)]
        if missing:
            raise ConfigError(f"{where}: {', '.join(missing)} missing or empty")
        controllers = raw["controllers"]
        if not isinstance(controllers, list) or not all(isinstance(c, str) for c in controllers):
            raise ConfigError(f'{where}: "controllers" must be a list of HOST:PORT strings')
        if not all(isinstance(raw[k], str) for k in ("ca", "cert", "key")):
            raise ConfigError(f'{where}: "ca", "cert" and "key" must be PEM text')
        return cls(
            controllers=tuple(controllers),
            ca_pem=raw["ca"].encode(),
            cert_pem=raw["cert"].encode(),
            key_pem=raw["key"].encode(),
            identity=str(raw.get("identity", "")),
            source=where,
        )

    def check(self, now: dt.datetime | None = None) -> RoleIdentity:
        """The identity of the client certificate, after checking what can be checked
        without the controller: the certificate is the CA's, in its validity period, and
        the key is its key."""
        where = self.source or "ipsecctl config"
        try:
            cas = x509.load_pem_x509_certificates(self.ca_pem)
        except ValueError:
            raise ConfigError(f'{where}: "ca" holds no PEM certificate') from None
        try:
            cert = x509.load_pem_x509_certificates(self.cert_pem)[0]
        except ValueError:
            raise ConfigError(f'{where}: "cert" holds no PEM certificate') from None
        try:
            key = load_private_key(self.key_pem, where=f'{where}: "key"')
        except CaError as exc:
            raise ConfigError(str(exc)) from None
        if _spki(key.public_key()) != _spki(cert.public_key()):
            raise ConfigError(f'{where}: "key" is not the key of "cert"')
        issuers = list(x509.load_pem_x509_certificates(self.cert_pem)[1:]) + cas
        if not any(_issued_by(cert, ca) for ca in issuers):
            raise ConfigError(
                f"{where}: the client certificate was not issued by the CA in the file"
            )
        now = now or dt.datetime.now(dt.UTC)
        if cert.not_valid_after_utc < now:
            raise ConfigError(
                f"{where}: the client certificate expired on "
                f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; ask an admin for a new "
                "one (`ipsecd-controller issue`)"
            )
        if cert.not_valid_before_utc > now:
            raise ConfigError(
                f"{where}: the client certificate is not valid before "
                f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; check this machine's clock"
            )
        try:
            return role_of(cert)
        except RoleError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def channel_credentials(self) -> object:
        """``grpc.ChannelCredentials`` for mTLS with this config (typed ``object``:
        grpc ships no type information)."""
        import grpc

        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem,
            private_key=self.key_pem,
            certificate_chain=self.cert_pem,
        )


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:
        return False
    return True


def locate(flag: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """The config file: ``--config``, else ``$IPSECCTL_CONFIG``, else the default path.
    A file named by the flag or the variable must exist (no silent fallback)."""
    env = os.environ if environ is None else environ
    if flag:
        path = Path(flag).expanduser()
        if not path.exists():
            raise ConfigError(f"{path} (--config): no such file")
        return path
    named = env.get(ENV_CONFIG)
    if named:
        path = Path(named).expanduser()
        if not path.exists():
            raise ConfigError(f"{path} (${ENV_CONFIG}): no such file")
        return path
    home = env.get("HOME") or str(Path.home())
    default = Path(home) / DEFAULT_CONFIG.removeprefix("~/")
    if default.exists():
        return default
    raise ConfigError(
        f"no ipsecctl config: no --config, ${ENV_CONFIG} is not set, and {default} does not "
        "exist. `ipsecd-controller init --state-dir DIR` writes DIR/admin.conf: copy it "
        f"to {default} (mode 0600) or pass --config DIR/admin.conf; `ipsecd-controller "
        "issue` makes one for another admin or viewer. A controller started with "
        "--insecure takes --controller HOST:PORT --insecure instead"
    )


def load_config(path: Path) -> ClientConfig:
    """Read and check the config at ``path`` (mode 0600: it holds a private key)."""
    try:
        data = read_private_file(
            path, "ipsecctl config (it holds a private key)", limit=MAX_CONFIG_BYTES
        )
    except CaError as exc:
        raise ConfigError(str(exc)) from None
    conf = ClientConfig.loads(data, where=str(path))
    conf.check()
    return conf
