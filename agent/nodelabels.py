"""Start the agent with its Kubernetes node's labels (the Helm chart's agent pods).

    python -m agent.nodelabels --node NAME [--keys K,K...] [--extra k=v,...]
                               [--cache FILE] -- ipsecd ARGS...

Reads the labels of Node ``NAME`` from the Kubernetes API with the pod's service
account (``GET /api/v1/nodes/NAME``: the agent's ClusterRole grants ``get`` on nodes
and nothing else, charts/ipsecd/README.md "RBAC"), keeps the ``--keys`` ones (all when
none is given), adds ``--extra``, and replaces itself with ``ARGS... --labels k=v,...``
(exec: the agent keeps the pod's PID and its signals).  The labels become the node's
ipsecd labels, which the SPD's ``nodes NAME label k=v`` groups match (docs/spd.md).

The answer is saved to ``--cache`` (0600, in the agent's state directory on the host),
and used when the API cannot be reached: a restarted agent must enforce its policy at
once, API server or not (docs/architecture.md "Safety properties").  Without a cache
an unreachable API stops with exit 2 and the reason.  The service account token is
sent only to the API server and never printed.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["ApiError", "fetch_labels", "labels_argument", "main", "select_labels"]

#: where Kubernetes mounts the service account's credentials in every pod
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
#: one answer of the API server, at most (a Node object is a few KiB)
_MAX_ANSWER = 4 * 1024 * 1024


class ApiError(Exception):
    """The node's labels could not be read; the message names the cause and the fix."""


def api_base(environ: Mapping[str, str]) -> str:
    """``https://HOST:PORT`` of the API server from the variables Kubernetes sets in
    every pod."""
    host = environ.get("KUBERNETES_SERVICE_HOST", "")
    port = environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise ApiError(
            "KUBERNETES_SERVICE_HOST is not set: this runs in a Kubernetes pod only "
            "(or set agent.nodeLabels.fromNode=false in the chart)"
        )
    if ":" in host:
        host = f"[{host}]"
    return f"https://{host}:{port}"


def fetch_labels(
    node: str,
    *,
    base: str,
    token: str,
    cafile: Path | None,
    timeout: float = 10.0,
) -> dict[str, str]:
    """The labels of Node ``node``; :class:`ApiError` with the reason otherwise."""
    url = f"{base}/api/v1/nodes/{urllib.parse.quote(node, safe='')}"
    context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    request = urllib.request.Request(
        url, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as answer:
            body = answer.read(_MAX_ANSWER + 1)
    except urllib.error.HTTPError as exc:
        exc.close()  # the error holds the open response
        hint = {
            401: "the service account token was refused",
            403: "the service account may not get nodes: the chart's ClusterRole "
            "(rbac.create) grants it",
            404: "no such node: --node must be spec.nodeName (downward API)",
        }.get(exc.code, "")
        raise ApiError(f"GET {url}: HTTP {exc.code}" + (f" ({hint})" if hint else "")) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ApiError(f"GET {url}: {reason}") from None
    if len(body) > _MAX_ANSWER:
        raise ApiError(f"GET {url}: answer larger than {_MAX_ANSWER} bytes")
    try:
        labels = json.loads(body)["metadata"].get("labels") or {}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ApiError(f"GET {url}: not a Node object") from None
    if not isinstance(labels, dict):
        raise ApiError(f"GET {url}: metadata.labels is not a map")
    return {str(k): str(v) for k, v in labels.items()}


def select_labels(
    labels: Mapping[str, str], keys: Sequence[str], extra: Mapping[str, str]
) -> dict[str, str]:
    """``labels`` reduced to ``keys`` (all when empty), then ``extra`` on top."""
    chosen = {k: v for k, v in labels.items() if not keys or k in keys}
    chosen.update(extra)
    return dict(sorted(chosen.items()))


def labels_argument(labels: Mapping[str, str]) -> str:
    """``k=v,k=v`` for ``ipsecd --labels``.  Kubernetes label keys and values never hold
    ``,`` or ``=`` in a value; anything else would be split wrongly, so it is refused."""
    for key, value in labels.items():
        if not key or any(c in key for c in ",= ") or any(c in value for c in ", "):
            raise ApiError(f"label {key!r}={value!r} cannot be passed as --labels k=v,...")
    return ",".join(f"{k}={v}" for k, v in labels.items())


def _pairs(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--extra: {item!r} is not key=value")
        out[key] = value
    return out


def _read_cache(path: Path) -> dict[str, str] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    return {str(k): str(v) for k, v in data.items()}


def _write_cache(path: Path, labels: Mapping[str, str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(dict(labels), f, sort_keys=True)
    os.replace(tmp, path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m agent.nodelabels",
        description="run COMMAND with --labels from this Kubernetes node's labels",
    )
    p.add_argument("--node", required=True, help="the node's name (spec.nodeName)")
    p.add_argument("--keys", default="", help="only these label keys K,K... (default: all)")
    p.add_argument("--extra", default="", help="more labels k=v,... (win over the node's)")
    p.add_argument("--cache", type=Path, help="last labels read, used when the API is down")
    p.add_argument(
        "--service-account",
        type=Path,
        default=SERVICE_ACCOUNT,
        help="folder with the token and ca.crt (default: the pod's)",
    )
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    return p


def _read_token(service_account: Path) -> str:
    try:
        return (service_account / "token").read_text().strip()
    except OSError as exc:
        raise ApiError(
            f"{service_account / 'token'}: {exc.strerror}: the pod has no service account "
            "token (automountServiceAccountToken)"
        ) from None


def resolve(args: argparse.Namespace, environ: Mapping[str, str]) -> dict[str, str]:
    """The labels to pass: from the API (saved to the cache), else from the cache."""
    keys = [k for k in (x.strip() for x in args.keys.split(",")) if k]
    extra = _pairs(args.extra)
    cafile = args.service_account / "ca.crt"
    try:
        labels = fetch_labels(
            args.node,
            base=api_base(environ),
            token=_read_token(args.service_account),
            cafile=cafile if cafile.exists() else None,
        )
    except ApiError as exc:
        cached = _read_cache(args.cache) if args.cache is not None else None
        if cached is None:
            raise
        print(
            f"warning: {exc}; using the labels saved in {args.cache} at the last start",
            file=sys.stderr,
        )
        return select_labels(cached, keys, extra)
    if args.cache is not None:
        _write_cache(args.cache, labels)
    return select_labels(labels, keys, extra)


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        print("error: no command after --: e.g. -- ipsecd --controller ...", file=sys.stderr)
        return 2
    try:
        labels = resolve(args, os.environ if environ is None else environ)
        argument = labels_argument(labels)
    except (ApiError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(command[0], [*command, "--labels", argument])


if __name__ == "__main__":
    raise SystemExit(main())
