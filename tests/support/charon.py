"""strongSwan ``charon`` as a real IKEv2 test peer, one instance per network namespace.

Facts this module is built on (shared/LAB-NOTES.md, re-measured here):

* charon hard-codes ``/var/run/charon.pid``, so every instance runs in a private mount
  namespace where its own ``DIR/run`` is bind-mounted on ``/run``;
* each instance gets its own ``strongswan.conf`` (``STRONGSWAN_CONF``), its own vici
  socket ``DIR/charon.vici`` and its own log file ``DIR/charon.log``;
* on the host kernel (no ESP) charon needs ``kernel-libipsec`` loaded *before*
  ``kernel-netlink`` (:data:`HOST_PLUGINS`); then only tunnel mode works, ESP is always
  UDP-encapsulated and the inner traffic selectors must differ from the IKE addresses.
  In the kernel lab use ``kernel-netlink`` alone (:data:`LAB_PLUGINS`).

Connections are described with :class:`Conn` / :class:`Child` and loaded through vici
(the same tree is rendered as ``swanctl.conf`` text for people and for ``swanctl``).
A :class:`Conn` authenticates with a PSK, or with X.509 certificates when it carries
:class:`Certs` (charon's certificate, key, intermediates and trust anchors, PEM): the
key goes over vici ``load-key``, the CA certificates over ``load-cert``, and the
connection says ``auth = pubkey`` both ways.

Typical use::

    with netns_pair("iki-") as (a, b), Charon.started(a, tmp / "a") as ca:
        ca.load([Conn(name="peer", local_addrs=("192.0.2.1",), ...)])
        ca.initiate("peer-child", ike="peer")
        sas = ca.list_sas()

Every wait is bounded; :meth:`Charon.stop` always kills the daemon.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.netns import Netns

CHARON_BIN = "/usr/lib/ipsec/charon"
SWANCTL_BIN = "/usr/sbin/swanctl"

# Crypto and infrastructure plugins every instance loads.  ``openssl`` (ECP groups,
# AES-GCM, ChaCha20-Poly1305 via OpenSSL) comes from Debian's
# ``libstrongswan-standard-plugins``; ``gmp`` gives the MODP groups.
CRYPTO_PLUGINS = (
    "random",
    "nonce",
    "openssl",
    "aes",
    "sha1",
    "sha2",
    "hmac",
    "kdf",
    "gmp",
    "curve25519",
    "chapoly",
    "gcm",
    "pem",
    "pkcs1",
    "pubkey",
    "x509",
)
# Host kernel: no ESP, so userspace ESP (libipsec) first, netlink for the rest.
HOST_PLUGINS = (*CRYPTO_PLUGINS, "kernel-libipsec", "kernel-netlink", "socket-default", "vici")
# Kernel lab: real ESP in the kernel.
LAB_PLUGINS = (*CRYPTO_PLUGINS, "kernel-netlink", "socket-default", "vici")
# swanctl's default plugin list costs ~1 s per call under emulation (LAB-NOTES).
SWANCTL_PLUGINS = ("random", "openssl", "pem", "pkcs1", "pkcs8", "x509", "pubkey")

# Log levels per subsystem (strongswan.conf "filelog"); ``ike=4`` makes charon print
# the derived IKE SA keys (SK_e*, SK_a*), which the capture tool extracts.
DEFAULT_LOG_LEVELS: Mapping[str, int] = {"default": 1, "ike": 1, "cfg": 1, "net": 1}


class CharonError(RuntimeError):
    """charon could not be started, configured or driven; the message says where and why."""


@dataclass(frozen=True, slots=True)
class Child:
    """One CHILD_SA of a connection (swanctl ``children.<name>``)."""

    name: str
    local_ts: tuple[str, ...] = ("dynamic",)
    remote_ts: tuple[str, ...] = ("dynamic",)
    esp_proposals: tuple[str, ...] = ("aes256gcm16",)
    mode: str = "tunnel"  # "tunnel" | "transport"
    start_action: str = "none"  # "none" | "trap" | "start"
    # 0 disables rekeying so long tests/benchmarks are not disturbed by it.
    rekey_time: int = 0

    def to_vici(self) -> dict[str, Any]:
        return {
            "local_ts": list(self.local_ts),
            "remote_ts": list(self.remote_ts),
            "esp_proposals": list(self.esp_proposals),
            "mode": self.mode,
            "start_action": self.start_action,
            "rekey_time": str(self.rekey_time),
        }


@dataclass(frozen=True, slots=True)
class Certs:
    """X.509 authentication of one connection (swanctl ``auth = pubkey``), all PEM.

    ``cert`` is charon's own certificate, sent with ``intermediates`` (the CA
    certificates between it and the root: loaded as CA certificates, which is how
    charon finds the chain it sends); ``key`` its private key (PKCS#8 or
    traditional; RSA, ECDSA or Ed25519); ``cacerts`` the trust anchors the peer's
    certificate must chain to (``remote.cacerts``, also loaded as CA certificates).
    """

    cert: bytes = field(repr=False)
    key: bytes = field(repr=False)
    intermediates: tuple[bytes, ...] = field(default=(), repr=False)
    cacerts: tuple[bytes, ...] = field(default=(), repr=False)

    def key_to_vici(self) -> dict[str, Any]:
        """vici ``load-key``: the key re-encoded as PEM of its own type (charon's
        ``pkcs8`` plugin is not in our plugin lists)."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

        key = serialization.load_pem_private_key(self.key, None)
        if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            kind = "rsa" if isinstance(key, rsa.RSAPrivateKey) else "ecdsa"
            fmt = serialization.PrivateFormat.TraditionalOpenSSL
        elif isinstance(key, ed25519.Ed25519PrivateKey):
            kind, fmt = "ed25519", serialization.PrivateFormat.PKCS8
        else:
            raise CharonError(f"Certs: unsupported private key {type(key).__name__}")
        data = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
        return {"type": kind, "data": data}


@dataclass(frozen=True, slots=True)
class Conn:
    """An IKE connection (swanctl ``connections.<name>``): PSK authentication, or
    certificates on both sides when ``certs`` is given (``psk`` is then unused)."""

    name: str
    local_addrs: tuple[str, ...]
    remote_addrs: tuple[str, ...]
    local_id: str
    remote_id: str
    psk: str = field(repr=False)
    ike_proposals: tuple[str, ...] = ("aes256gcm16-prfsha384-ecp384",)
    children: tuple[Child, ...] = ()
    version: int = 2
    unique: str = "never"
    encap: bool = False
    rekey_time: int = 0
    # Further swanctl connection keys (e.g. {"dpd_delay": "5s"}), added verbatim.
    extra: Mapping[str, str] = field(default_factory=dict)
    certs: Certs | None = None

    def _auth(self, *, files: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        """local-1 and remote-1: certificates as PEM (vici) or as the file names
        :meth:`Charon.load` writes for ``swanctl.conf`` (``files``)."""
        if self.certs is None:
            return {"auth": "psk", "id": self.local_id}, {"auth": "psk", "id": self.remote_id}
        local: dict[str, Any] = {"auth": "pubkey", "id": self.local_id}
        remote: dict[str, Any] = {"auth": "pubkey", "id": self.remote_id}
        local["certs"] = [f"{self.name}.pem" if files else self.certs.cert]
        if self.certs.cacerts:
            remote["cacerts"] = [
                f"{self.name}-ca-{i}.pem" if files else pem
                for i, pem in enumerate(self.certs.cacerts)
            ]
        return local, remote

    def to_vici(self, *, files: bool = False) -> dict[str, Any]:
        local, remote = self._auth(files=files)
        conn: dict[str, Any] = {
            "version": str(self.version),
            "local_addrs": list(self.local_addrs),
            "remote_addrs": list(self.remote_addrs),
            "proposals": list(self.ike_proposals),
            "unique": self.unique,
            "encap": "yes" if self.encap else "no",
            "rekey_time": str(self.rekey_time),
            "local-1": local,
            "remote-1": remote,
            "children": {c.name: c.to_vici() for c in self.children},
        }
        conn.update(self.extra)
        return conn

    def secret_to_vici(self) -> dict[str, Any]:
        return {
            "type": "IKE",
            "data": self.psk,
            "owners": [self.local_id, self.remote_id],
        }


def render_swanctl_conf(conns: Sequence[Conn], *, with_secrets: bool = True) -> str:
    """The swanctl.conf text equivalent to what :meth:`Charon.load` sends over vici."""
    tree: dict[str, Any] = {"connections": {c.name: c.to_vici(files=True) for c in conns}}
    if with_secrets and any(c.certs is None for c in conns):
        # swanctl.conf spells secrets differently from vici's load-shared: the type is
        # the section prefix, the owners are id-N.
        tree["secrets"] = {
            f"ike-{c.name}": {"secret": f'"{c.psk}"', "id-1": c.local_id, "id-2": c.remote_id}
            for c in conns
            if c.certs is None
        }
    return _render_tree(tree, 0)


def _render_tree(tree: Mapping[str, Any], depth: int) -> str:
    pad = "    " * depth
    out = []
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.append(f"{pad}{key} {{\n{_render_tree(value, depth + 1)}{pad}}}\n")
        elif isinstance(value, list | tuple):
            out.append(f"{pad}{key} = {','.join(str(v) for v in value)}\n")
        else:
            out.append(f"{pad}{key} = {value}\n")
    return "".join(out)


def render_strongswan_conf(
    workdir: Path,
    plugins: Sequence[str],
    *,
    log_levels: Mapping[str, int] = DEFAULT_LOG_LEVELS,
    tuning: Mapping[str, str] | None = None,
) -> str:
    """strongswan.conf for one instance living in ``workdir``."""
    levels = "".join(f"            {k} = {v}\n" for k, v in log_levels.items())
    tune = "".join(f"    {k} = {v}\n" for k, v in (tuning or {}).items())
    return (
        "charon {\n"
        "    load_modular = no\n"
        f"    load = {' '.join(plugins)}\n"
        "    install_virtual_ip = no\n"
        "    retransmit_tries = 2\n"
        "    retransmit_timeout = 1.0\n"
        "    retransmit_base = 1.4\n"
        f"{tune}"
        "    filelog {\n"
        "        log {\n"
        f"            path = {workdir}/charon.log\n"
        "            time_format = %s\n"
        "            ike_name = yes\n"
        "            flush_line = yes\n"
        f"{levels}"
        "        }\n"
        "    }\n"
        "    syslog {\n"
        "        daemon {\n"
        "            default = -1\n"
        "        }\n"
        "    }\n"
        "    plugins {\n"
        "        vici {\n"
        f"            socket = unix://{workdir}/charon.vici\n"
        "        }\n"
        "    }\n"
        "}\n"
        "swanctl {\n"
        f"    load = {' '.join(SWANCTL_PLUGINS)}\n"
        "}\n"
    )


def _text(value: object) -> object:
    """vici answers with bytes; turn them (recursively) into str for easy asserts."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, Mapping):
        return {str(_text(k)): _text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_text(v) for v in value]
    return value


class Charon:
    """One running charon in ``netns``; all its files under ``workdir``."""

    def __init__(
        self,
        netns: Netns,
        workdir: Path,
        *,
        plugins: Sequence[str] = HOST_PLUGINS,
        log_levels: Mapping[str, int] = DEFAULT_LOG_LEVELS,
        tuning: Mapping[str, str] | None = None,
    ) -> None:
        self.netns = netns
        self.workdir = Path(workdir)
        self.plugins = tuple(plugins)
        self.log_levels = dict(log_levels)
        self.tuning = dict(tuning or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self._local = threading.local()
        self._sessions: list[socket.socket] = []
        self._lock = threading.Lock()

    # -- files ---------------------------------------------------------------------------

    @property
    def conf_path(self) -> Path:
        return self.workdir / "strongswan.conf"

    @property
    def vici_path(self) -> Path:
        return self.workdir / "charon.vici"

    @property
    def log_path(self) -> Path:
        return self.workdir / "charon.log"

    @property
    def uri(self) -> str:
        return f"unix://{self.vici_path}"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # -- lifecycle -----------------------------------------------------------------------

    @classmethod
    @contextlib.contextmanager
    def started(cls, netns: Netns, workdir: Path, **kw: Any) -> Iterator[Charon]:
        """Start charon, yield it, always stop (kill) it."""
        charon = cls(netns, workdir, **kw)
        try:
            charon.start()
            yield charon
        finally:
            charon.stop()

    def start(self, timeout: float = 15.0) -> None:
        """Write the config, start charon in its own mount namespace, wait for vici."""
        if not os.path.exists(CHARON_BIN):
            raise CharonError(
                f"{CHARON_BIN} not found: install Debian strongswan-charon (make deps installs it)"
            )
        (self.workdir / "run").mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(
            render_strongswan_conf(
                self.workdir, self.plugins, log_levels=self.log_levels, tuning=self.tuning
            )
        )
        with contextlib.suppress(FileNotFoundError):
            self.vici_path.unlink()
        script = f'mount --bind "{self.workdir}/run" /run && exec {CHARON_BIN}'
        env = dict(os.environ, STRONGSWAN_CONF=str(self.conf_path))
        out = (self.workdir / "charon.stdout").open("wb")
        try:
            # ip netns exec → unshare → sh all exec(), so proc.pid ends up being charon.
            self.proc = self.netns.popen(
                ["unshare", "-m", "sh", "-c", script],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CharonError(
                    f"charon in netns {self.netns.name} exited with {self.proc.returncode} "
                    f"during start-up; log tail:\n{self.log_tail()}\nstdout:\n"
                    f"{(self.workdir / 'charon.stdout').read_text(errors='replace')[-2000:]}"
                )
            if self.vici_path.exists():
                try:
                    self._session()
                    return
                except OSError:
                    pass
            time.sleep(0.05)
        self.stop()
        raise CharonError(
            f"charon in netns {self.netns.name} did not open its vici socket "
            f"{self.vici_path} within {timeout:.0f} s; log tail:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 5.0) -> None:
        """Stop charon: SIGTERM, then SIGKILL after ``timeout``.  Never raises."""
        with self._lock:
            for sock in self._sessions:
                with contextlib.suppress(OSError):
                    sock.close()
            self._sessions.clear()
        self._local = threading.local()
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- vici ----------------------------------------------------------------------------

    def _session(self, timeout: float = 30.0) -> Any:
        """A vici session for the calling thread (vici sessions are not thread-safe)."""
        sess = getattr(self._local, "session", None)
        if sess is not None:
            return sess
        try:
            import vici
        except ImportError as exc:  # pragma: no cover - dev extra installs it
            raise CharonError("Python package `vici` missing: pip install -e '.[dev]'") from exc
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Blocking connect: a non-blocking one fails with EAGAIN when charon's
            # listen backlog is full (several threads connecting at once).
            sock.connect(str(self.vici_path))
        except OSError:
            sock.close()
            raise
        sock.settimeout(timeout)
        with self._lock:
            self._sessions.append(sock)
        sess = vici.Session(sock)
        self._local.session = sess
        return sess

    def _call(self, what: str, fn: Any) -> Any:
        if not self.running:
            raise CharonError(
                f"charon in netns {self.netns.name} is not running ({what}); "
                f"log tail:\n{self.log_tail()}"
            )
        try:
            return fn(self._session())
        except CharonError:
            raise
        except Exception as exc:
            raise CharonError(
                f"vici {what} on charon in netns {self.netns.name} failed: {exc}; "
                f"log tail:\n{self.log_tail()}"
            ) from exc

    def load(self, conns: Sequence[Conn]) -> None:
        """Load connections and their PSKs, or their certificates and keys; also write
        ``swanctl.conf`` for reference (with the certificate and key files it names
        under ``WORKDIR/swanctl``, as ``SWANCTL_DIR`` would hold them)."""
        path = self.workdir / "swanctl.conf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds the PSKs
        with os.fdopen(fd, "w") as out:
            out.write(render_swanctl_conf(conns))
        for conn in conns:
            if conn.certs is not None:
                self.load_certs(conn.name, conn.certs)
            self._call("load-conn", lambda s, c=conn: s.load_conn({c.name: c.to_vici()}))
            if conn.certs is None:
                self._call(
                    "load-shared",
                    lambda s, c=conn: s.load_shared({"id": f"ike-{c.name}", **c.secret_to_vici()}),
                )

    def load_certs(self, name: str, certs: Certs) -> None:
        """vici ``load-key`` for the private key and ``load-cert`` (as CA
        certificates) for the intermediates and trust anchors of connection ``name``;
        the files go under ``WORKDIR/swanctl`` (the key 0600) for reference."""
        base = self.workdir / "swanctl"
        for sub in ("x509", "x509ca", "private"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        (base / "x509" / f"{name}.pem").write_bytes(certs.cert)
        for i, pem in enumerate(certs.cacerts):
            (base / "x509ca" / f"{name}-ca-{i}.pem").write_bytes(pem)
        for i, pem in enumerate(certs.intermediates):
            (base / "x509ca" / f"{name}-im-{i}.pem").write_bytes(pem)
        key = certs.key_to_vici()
        fd = os.open(base / "private" / f"{name}.pem", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key["data"])
        self._call("load-key", lambda s: s.load_key(key))
        for pem in (*certs.intermediates, *certs.cacerts):
            req = {"type": "X509", "flag": "CA", "data": pem}
            self._call("load-cert", lambda s, r=req: s.load_cert(r))

    def initiate(self, child: str, *, ike: str | None = None, timeout: float = 10.0) -> None:
        """Initiate ``child`` (and its IKE SA) and wait until it is up or failed.

        Raises :class:`CharonError` when charon reports a failure or ``timeout`` passes.
        """
        req: dict[str, Any] = {"child": child, "timeout": str(int(timeout * 1000))}
        if ike:
            req["ike"] = ike

        def run(s: Any) -> None:
            for _log in s.initiate(req):
                pass

        self._call(f"initiate {child}", run)

    def list_sas(self, ike: str | None = None) -> list[dict[str, Any]]:
        """vici ``list-sas``: one dict per IKE SA, ``{name: {...}}`` flattened to the value
        plus ``"name"``; all bytes turned into str."""
        req = {"ike": ike} if ike else {}
        raw = self._call("list-sas", lambda s: list(s.list_sas(req)))
        out: list[dict[str, Any]] = []
        for entry in raw:
            for name, body in _text(entry).items():  # type: ignore[union-attr]
                out.append({"name": name, **body})
        return out

    def terminate_ike(self, ike: str, *, timeout: float = 5.0, force: bool = True) -> None:
        """Delete the IKE SAs of connection ``ike`` (INFORMATIONAL Delete, RFC 7296
        1.4.1).  ``force``: charon drops the SA without waiting for the answer;
        otherwise it waits (up to ``timeout``) for the peer to answer the Delete."""
        req = {"ike": ike, "timeout": str(int(timeout * 1000))}
        if force:
            req["force"] = "yes"

        def run(s: Any) -> None:
            for _log in s.terminate(req):
                pass

        self._call(f"terminate {ike}", run)

    def rekey(self, *, child: str | None = None, ike: str | None = None) -> int:
        """Start rekeying the CHILD SAs of ``child`` (RFC 7296 1.3.3) or the IKE SAs of
        ``ike`` (RFC 7296 2.18; a rekey, never a reauthentication) and return at once:
        charon queues the exchange, poll :meth:`list_sas` for the outcome.  Returns how
        many SAs charon matched; raises :class:`CharonError` when it matched none."""
        if (child is None) == (ike is None):
            raise ValueError("Charon.rekey: name exactly one of child= or ike=")
        req = {"child": child} if child is not None else {"ike": ike, "reauth": "no"}
        answer = _text(self._call(f"rekey {req}", lambda s: s.rekey(req)))
        assert isinstance(answer, dict)
        if answer.get("success", "yes") != "yes" or int(answer.get("matches", "0")) < 1:
            raise CharonError(
                f"vici rekey {req} on charon in netns {self.netns.name}: {answer}; "
                f"log tail:\n{self.log_tail()}"
            )
        return int(answer["matches"])

    def stats(self) -> dict[str, Any]:
        return _text(self._call("stats", lambda s: s.stats()))  # type: ignore[return-value]

    def swanctl(self, *args: str, timeout: float = 20.0) -> str:
        """Run ``swanctl ARGS --uri <this instance>`` (the command goes before --uri)."""
        proc = subprocess.run(
            [SWANCTL_BIN, *args, "--uri", self.uri],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
            env=dict(os.environ, STRONGSWAN_CONF=str(self.conf_path)),
        )
        if proc.returncode != 0:
            raise CharonError(
                f"`swanctl {' '.join(args)}` against {self.uri} exited {proc.returncode}: "
                f"{proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc.stdout


# -- the matching configuration for our engine --------------------------------------------

#: charon's names (vici ``list-sas``) of the transforms our proposals use.
CHARON_ALG_NAMES: Mapping[str, Mapping[str, str]] = {
    "aes256gcm16": {"encr-alg": "AES_GCM_16", "encr-keysize": "256"},
    "aes128gcm16": {"encr-alg": "AES_GCM_16", "encr-keysize": "128"},
    "aes256": {"encr-alg": "AES_CBC", "encr-keysize": "256"},
    "aes128": {"encr-alg": "AES_CBC", "encr-keysize": "128"},
    "chacha20poly1305": {"encr-alg": "CHACHA20_POLY1305"},
    "sha256": {"integ-alg": "HMAC_SHA2_256_128"},
    "sha384": {"integ-alg": "HMAC_SHA2_384_192"},
    "sha512": {"integ-alg": "HMAC_SHA2_512_256"},
    "prfsha256": {"prf-alg": "PRF_HMAC_SHA2_256"},
    "prfsha384": {"prf-alg": "PRF_HMAC_SHA2_384"},
    "prfsha512": {"prf-alg": "PRF_HMAC_SHA2_512"},
    "modp2048": {"dh-group": "MODP_2048"},
    "modp3072": {"dh-group": "MODP_3072"},
    "ecp256": {"dh-group": "ECP_256"},
    "ecp384": {"dh-group": "ECP_384"},
    "ecp521": {"dh-group": "ECP_521"},
    "curve25519": {"dh-group": "CURVE_25519"},
}


def expected_charon_algs(proposal: str, *, ike: bool) -> dict[str, str]:
    """What ``list-sas`` shows for a one-proposal string such as
    ``aes256-sha256-modp2048`` (IKE: a ``sha*`` without ``prf*`` names the PRF too)."""
    out: dict[str, str] = {}
    tokens = proposal.split("-")
    for tok in tokens:
        out.update(CHARON_ALG_NAMES[tok])
    if ike and not any(t.startswith("prf") for t in tokens):
        for tok in tokens:
            if tok.startswith("sha"):
                out.update(CHARON_ALG_NAMES["prf" + tok])
    if not ike:
        out.pop("dh-group", None)
    return out


def _engine_identity(text: str) -> Any:
    from ipsecd.ike.config import Identity

    if text.startswith("@#"):
        return Identity.key_id(bytes.fromhex(text[2:]))
    return Identity.parse(text.lstrip("@"))


def engine_config_for(conn: Conn, child: Child | None = None, **overrides: Any) -> Any:
    """Our engine's ``IkeConfig`` for the *peer* of charon's ``conn``: addresses, IDs,
    selectors swapped; the same PSK and proposals; ``child`` (default the first)."""
    from ipsecd.ike.config import (
        ChildConfig,
        IkeConfig,
        Mode,
        parse_child_proposal,
        parse_ike_proposal,
        selectors,
    )

    ch = child or conn.children[0]
    kw: dict[str, Any] = {
        "name": conn.name,
        "local_id": _engine_identity(conn.remote_id),
        "remote_id": _engine_identity(conn.local_id),
        "psk": conn.psk.encode(),
        "child": ChildConfig(
            local_ts=selectors(ch.remote_ts),
            remote_ts=selectors(ch.local_ts),
            mode=Mode.TUNNEL if ch.mode == "tunnel" else Mode.TRANSPORT,
            proposals=tuple(parse_child_proposal(p) for p in ch.esp_proposals),
        ),
        "ike_proposals": tuple(parse_ike_proposal(p) for p in conn.ike_proposals),
        "local_address": conn.remote_addrs[0],
        "remote_address": conn.local_addrs[0],
    }
    kw.update(overrides)
    return IkeConfig(**kw)
