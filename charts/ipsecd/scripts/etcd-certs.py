#!/usr/bin/env python3
"""Make the TLS material of the Helm chart's bundled etcd (charts/ipsecd/README.md "etcd").

    python3 charts/ipsecd/scripts/etcd-certs.py --fullname FULLNAME --namespace NS \\
        [--cluster-domain cluster.local] [--out ./ipsecd-etcd-pki]

Run it where ipsecd is installed (it uses the controller's own etcd PKI code,
controller/etcd_pki.py: the same certificates the controller's private etcd uses, with
the bundled etcd's names).  In ``--out`` (mode 0700, every file 0600) it writes an etcd
CA used for nothing else (docs/security.md "The etcd link": etcd admits every
certificate of its CA), the members' certificate (serverAuth and clientAuth: the client
and the peer port) naming every member and the client Service, and the controller's
client certificate.  It prints the two ``kubectl create secret`` commands: the members'
Secret (ca.pem server.pem server.key) and the controller's (ca.pem client.pem
client.key).  Keep ``ca.key`` offline: running the script again on the same folder
keeps what is valid and issues what is missing or near its end.  FULLNAME is the
chart's "<fullname>" (NOTES.txt prints the command with it: the release name, or
RELEASE-ipsecd when the release name does not contain "ipsecd").
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def etcd_hosts(fullname: str, namespace: str, domain: str) -> tuple[str, ...]:
    """Every name the bundled etcd is dialed by (charts/ipsecd/templates/etcd.yaml):
    each member by its headless-Service name (peers, advertised client URLs), the
    client Service (the controller's --etcd), and the loopback names for etcdctl inside
    a member's pod."""
    etcd = f"{fullname}-etcd"
    headless = f"{etcd}-headless.{namespace}.svc"
    return (
        f"*.{headless}.{domain}",
        f"*.{headless}",
        f"{etcd}.{namespace}.svc",
        f"{etcd}.{namespace}.svc.{domain}",
        f"{etcd}.{namespace}",
        "localhost",
        "127.0.0.1",
    )


def _checked(value: str, what: str) -> str:
    parts = value.rstrip(".").split(".")
    if not value or not all(_DNS_LABEL.match(p) for p in parts):
        raise SystemExit(
            f"error: {what} {value!r} is not a DNS name (lower-case letters, digits, '-')"
        )
    return value.rstrip(".")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="etcd-certs.py", description=__doc__.splitlines()[0] if __doc__ else None
    )
    p.add_argument("--fullname", required=True, help='the chart\'s "<fullname>" (NOTES.txt)')
    p.add_argument("--namespace", required=True, help="the release namespace")
    p.add_argument("--cluster-domain", default="cluster.local", help="values.yaml clusterDomain")
    p.add_argument("--out", type=Path, default=Path("ipsecd-etcd-pki"), help="output folder")
    args = p.parse_args(argv)
    fullname = _checked(args.fullname, "--fullname")
    namespace = _checked(args.namespace, "--namespace")
    domain = _checked(args.cluster_domain, "--cluster-domain")
    try:
        from controller.ca import CaError
        from controller.etcd_pki import ensure_etcd_pki
    except ImportError as exc:
        print(
            f"error: {exc}: run this where ipsecd is installed (the ipsecd-controller "
            "command's Python), e.g. /opt/ipsecd/bin/python3 etcd-certs.py ...",
            file=sys.stderr,
        )
        return 2
    try:
        pki = ensure_etcd_pki(args.out, hosts=etcd_hosts(fullname, namespace, domain))
    except (CaError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    q = shlex.quote
    print(f"# etcd TLS for {fullname} in {namespace}: {pki.dir} (keep {pki.ca_key} offline)")
    print(
        f"kubectl -n {q(namespace)} create secret generic {q(fullname + '-etcd-server')} "
        f"--from-file={q(str(pki.ca_cert))} --from-file={q(str(pki.server_cert))} "
        f"--from-file={q(str(pki.server_key))}"
    )
    print(
        f"kubectl -n {q(namespace)} create secret generic {q(fullname + '-etcd-client')} "
        f"--from-file={q(str(pki.ca_cert))} --from-file={q(str(pki.client_cert))} "
        f"--from-file={q(str(pki.client_key))}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
