"""The Helm chart charts/ipsecd, offline.

``helm lint --strict`` and ``helm template`` through helm-python-sdk (Helm's own Go
code, bundled in the wheel: nothing is downloaded), every rendered manifest validated by
kubernetes-validate in strict mode against a fixed Kubernetes version (the chart's
minimum), and assertions on what matters for a node's security.  The pieces that run
in the pods and can run here run for real: the controller's state-dir copy script, the
serving certificate from the init command of NOTES.txt (a real gRPC TLS handshake for
every name the pods dial).  What needs a cluster is not tested here
(docs/operations.md "Kubernetes").
"""

from __future__ import annotations

import base64
import concurrent.futures
import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from agent.status import DEFAULT_SOCKET
from controller.ca import CaError
from controller.statedir import load_serving

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "ipsecd"
#: the chart's minimum (Chart.yaml kubeVersion); kubernetes-validate bundles its schemas
K8S_VERSION = "1.29.0"
RELEASE, NAMESPACE = "ipsecd", "ipsec-system"

# Sentinels: if one of them shows up outside a Secret, a secret leaked.
TOKEN = "jt.0123456789abcdef-TOKEN-SENTINEL"
ENVELOPE = base64.b64encode(b"E" * 32).decode()
PKI = {
    "caCert": "-----BEGIN CERTIFICATE-----\nCA-CERT-SENTINEL\n-----END CERTIFICATE-----\n",
    "caKey": "-----BEGIN PRIVATE KEY-----\nCA-KEY-SENTINEL\n-----END PRIVATE KEY-----\n",
    "serverCert": "-----BEGIN CERTIFICATE-----\nSERVER-CERT-SENTINEL\n-----END CERTIFICATE-----\n",
    "serverKey": "-----BEGIN PRIVATE KEY-----\nSERVER-KEY-SENTINEL\n-----END PRIVATE KEY-----\n",
    "crl": "-----BEGIN X509 CRL-----\nCRL-SENTINEL\n-----END X509 CRL-----\n",
    "caRecords": '{"crl_number": 1, "certs": []}\n',
    "envelopeKeyBase64": ENVELOPE,
}
SECRET_SENTINELS = [TOKEN, "CA-KEY-SENTINEL", "SERVER-KEY-SENTINEL", ENVELOPE]

VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "external-etcd": {
        "etcd": {
            "mode": "external",
            "clientSecret": "corp-etcd-client",
            "external": {
                "endpoints": ["https://10.0.0.5:2379", "https://10.0.0.6:2379"],
                "serverName": "etcd.corp.example",
            },
        }
    },
    "external-etcd-plaintext": {
        "etcd": {
            "mode": "external",
            "plaintext": True,
            "external": {"endpoints": ["http://10.0.0.5:2379"]},
        },
        "controller": {"replicas": 0, "joinPort": 7600},
        "logFormat": "json",
    },
    "existing-secrets": {
        "pki": {"existingSecret": "my-ipsecd-pki", "caExistingSecret": "my-ipsecd-ca"},
        "joinToken": {"existingSecret": "my-join", "key": "join-token"},
    },
    "chart-secrets": {
        "pki": {"create": True, **PKI},
        "joinToken": {"create": True, "value": TOKEN + "\n"},
    },
    "metrics-servicemonitor": {
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}
    },
    "custom-tolerations": {
        "agent": {
            "tolerations": [
                {"key": "dedicated", "operator": "Equal", "value": "edge", "effect": "NoSchedule"}
            ],
            "nodeSelector": {"kubernetes.io/os": "linux"},
        }
    },
    "small": {
        "insecure": True,
        "controller": {"replicas": 3, "podAntiAffinity": "hard", "listenHost": "::"},
        "etcd": {
            "plaintext": True,
            "bundled": {"replicas": 1, "networkPolicy": {"enabled": False}},
        },
        "agent": {
            "nodeAddresses": "hostIP",
            "nodeLabels": {"fromNode": False},
            "labels": {"role": "edge"},
            "ikeFragmentSize": 1400,
        },
        "metrics": {"enabled": False},
        "dashboards": {"enabled": False},
    },
}

# A ServiceMonitor has no schema in kubernetes-validate (a CRD of the Prometheus
# Operator): the fields the chart uses, strictly, from the CRD's documentation.
_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
}
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": _SELECTOR,
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "relabelings": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "sourceLabels": {
                                            "type": "array",
                                            "items": {"type": "string"},
                                        },
                                        "targetLabel": {"type": "string"},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


class Rendered:
    """One `helm template`: the manifests (parsed), their text, NOTES.txt."""

    def __init__(self, files: dict[str, str]) -> None:
        self.notes = ""
        self.texts: list[tuple[str, dict[str, Any]]] = []
        for path, text in sorted(files.items()):
            if path.endswith("NOTES.txt"):
                self.notes = text
                continue
            for part in re.split(r"^---\s*$", text, flags=re.M):
                doc = yaml.safe_load(part)
                if doc:
                    self.texts.append((part, doc))
        self.docs = [doc for _, doc in self.texts]

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name: str) -> dict[str, Any]:
        found = [d for d in self.kinds(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
        return found[0]


def render(values: dict[str, Any] | None = None, chart: Path = CHART) -> Rendered:
    with helm.Chart.load(chart) as loaded:
        return Rendered(loaded.render(values, name=RELEASE, namespace=NAMESPACE))


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def agent_pod(r: Rendered) -> dict[str, Any]:
    return r.one("DaemonSet", f"{RELEASE}-agent")["spec"]["template"]["spec"]


def controller_pod(r: Rendered) -> dict[str, Any]:
    return r.one("StatefulSet", f"{RELEASE}-controller")["spec"]["template"]["spec"]


def signer_pod(r: Rendered) -> dict[str, Any]:
    return r.one("StatefulSet", f"{RELEASE}-signer")["spec"]["template"]["spec"]


def controller_pods(r: Rendered) -> list[dict[str, Any]]:
    """Every controller pod template: the replicas' and the signer's (when rendered)."""
    return [
        d["spec"]["template"]["spec"]
        for d in r.kinds("StatefulSet")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == "controller"
    ]


def secrets_named(pod: dict[str, Any]) -> set[str]:
    """Every Secret a pod names (volumes, env), i.e. what its node's kubelet may read."""
    names = {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
    for c in pod["containers"] + pod.get("initContainers", []):
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                names.add(ref["name"])
    return names


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod["containers"] if c["name"] == name)


def flag(args: list[str], name: str) -> str | None:
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"{name}=")]
    assert len(values) <= 1, (name, args)
    return values[0] if values else None


@pytest.fixture(scope="module")
def rendered() -> dict[str, Rendered]:
    return {name: render(values) for name, values in VALUE_SETS.items()}


# --------------------------------------------------------------------------- lint


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint_strict(name: str) -> None:
    report = helm.lint(
        CHART, VALUE_SETS[name], strict=True, namespace=NAMESPACE, kube_version=f"v{K8S_VERSION}"
    )
    assert report["total_charts_linted"] == 1
    assert report["errors"] == []
    # severity 1 is information ("icon is recommended"); warnings fail --strict
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_lint_reports_a_broken_template(tmp_path: Path) -> None:
    """The lint above is not vacuous: a broken copy of the chart fails it."""
    broken = tmp_path / "ipsecd"
    shutil.copytree(CHART, broken)
    (broken / "templates" / "broken.yaml").write_text("{{ .Values.nothing.here }}\n")
    report = helm.lint(broken, strict=True, namespace=NAMESPACE)
    assert report["errors"], report
    assert any("broken.yaml" in m["path"] + m["error"] for m in report["messages"])


# ------------------------------------------------------------------ manifest schemas


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_manifest_validates_strictly(rendered: dict[str, Rendered], name: str) -> None:
    r = rendered[name]
    assert r.docs
    for doc in r.docs:
        where = f"{name}: {doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"] == "monitoring.coreos.com/v1":
            jsonschema.validate(doc, SERVICE_MONITOR_SCHEMA)
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(f"{where}: {exc.message}")


def test_strict_validation_catches_a_misspelt_field(rendered: dict[str, Rendered]) -> None:
    ds = copy.deepcopy(rendered["default"].one("DaemonSet", f"{RELEASE}-agent"))
    ds["spec"]["template"]["spec"]["hostNetwrk"] = True
    with pytest.raises(kubernetes_validate.ValidationError, match="hostNetwrk"):
        kubernetes_validate.validate(ds, K8S_VERSION, strict=True)


def test_all_objects_in_the_release_namespace_with_labels(rendered: dict[str, Rendered]) -> None:
    for r in rendered.values():
        for doc in r.docs:
            meta = doc["metadata"]
            if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
                assert meta["namespace"] == NAMESPACE, doc["kind"]
            assert meta["labels"]["app.kubernetes.io/instance"] == RELEASE
            assert meta["labels"]["app.kubernetes.io/part-of"] == "ipsecd"


# ------------------------------------------------------------------------- agent


def test_agent_pod_security(rendered: dict[str, Rendered]) -> None:
    for name, r in rendered.items():
        pod = agent_pod(r)
        agent = container(pod, "agent")
        sc = agent["securityContext"]
        assert pod["hostNetwork"] is True, name
        assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
        assert "hostPID" not in pod and "hostIPC" not in pod
        assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_BIND_SERVICE"]}
        assert sc["privileged"] is False
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["runAsUser"] == 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert [c["name"] for c in pod["containers"]] == ["agent"]
        assert "initContainers" not in pod


def test_agent_rollout_and_placement(rendered: dict[str, Rendered]) -> None:
    ds = rendered["default"].one("DaemonSet", f"{RELEASE}-agent")
    assert ds["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0},
    }
    pod = ds["spec"]["template"]["spec"]
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["terminationGracePeriodSeconds"] == 30
    custom = agent_pod(rendered["custom-tolerations"])
    assert custom["tolerations"] == VALUE_SETS["custom-tolerations"]["agent"]["tolerations"]
    assert custom["nodeSelector"] == {"kubernetes.io/os": "linux"}
    # the update strategy is not a value: every value set renders the same
    for r in rendered.values():
        assert (
            r.one("DaemonSet", f"{RELEASE}-agent")["spec"]["updateStrategy"]
            == ds["spec"]["updateStrategy"]
        )


def test_agent_command_line_and_downward_api(rendered: dict[str, Rendered]) -> None:
    agent = container(agent_pod(rendered["default"]), "agent")
    env = {e["name"]: e for e in agent["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["NODE_ADDRESSES"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.hostIPs"}}
    cmd, args = agent["command"], agent["args"]
    # the node's labels through agent/nodelabels.py, which execs ipsecd with --labels
    assert cmd[:3] == ["python3", "-m", "agent.nodelabels"]
    assert cmd[-2:] == ["--", "ipsecd"]
    assert flag(cmd, "--node") == "$(NODE_NAME)"
    assert flag(cmd, "--cache") == "/var/lib/ipsecd/node-labels.json"
    assert flag(args, "--controller") == f"{RELEASE}-controller.{NAMESPACE}.svc:7480"
    assert flag(args, "--node") == "$(NODE_NAME)"
    assert flag(args, "--state-dir") == "/var/lib/ipsecd"
    assert flag(args, "--addresses") == "$(NODE_ADDRESSES)"
    assert flag(args, "--metrics-listen") == "0.0.0.0:9470"
    assert "--insecure" not in args and flag(args, "--labels") is None

    small = container(agent_pod(rendered["small"]), "agent")
    assert small["command"] == ["ipsecd"]
    assert flag(small["args"], "--labels") == "role=edge"
    assert flag(small["args"], "--addresses") == "$(NODE_ADDRESS)"
    assert flag(small["args"], "--ike-fragment-size") == "1400"
    assert flag(small["args"], "--metrics-listen") is None
    assert "--insecure" in small["args"]
    assert "IPSECD_JOIN_TOKEN" not in {e["name"] for e in small["env"]}


def test_agent_state_on_the_host_and_probes_on_the_status_socket(
    rendered: dict[str, Rendered],
) -> None:
    pod = agent_pod(rendered["default"])
    agent = container(pod, "agent")
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in agent["volumeMounts"]}
    assert volumes[mounts["/var/lib/ipsecd"]]["hostPath"] == {
        "path": "/var/lib/ipsecd",
        "type": "DirectoryOrCreate",
    }
    assert "emptyDir" in volumes[mounts["/run/ipsecd"]]
    assert flag(agent["args"], "--socket") == "/run/ipsecd/ipsecd.sock"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert agent[probe]["exec"]["command"] == ["ipsecd", "service", "status"]
    # the probe command exists (no usage error) and asks the socket the agent serves on
    assert str(DEFAULT_SOCKET) == flag(agent["args"], "--socket")
    done = subprocess.run(
        [sys.executable, "-m", "agent.main", "service", "status"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr  # 1: no agent runs on this machine
    if done.returncode == 1:
        assert str(DEFAULT_SOCKET) in done.stderr


def test_node_labels_rbac_is_get_on_nodes_only(rendered: dict[str, Rendered]) -> None:
    r = rendered["default"]
    (role,) = r.kinds("ClusterRole")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]
    (binding,) = r.kinds("ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": f"{RELEASE}-agent", "namespace": NAMESPACE}
    ]
    assert not r.kinds("Role") and not r.kinds("RoleBinding")
    assert agent_pod(r)["automountServiceAccountToken"] is True
    assert controller_pod(r)["automountServiceAccountToken"] is False
    # no labels from the API: no ClusterRole, no token in the agent's pod
    small = rendered["small"]
    assert not small.kinds("ClusterRole") and not small.kinds("ClusterRoleBinding")
    assert agent_pod(small)["automountServiceAccountToken"] is False


# ----------------------------------------------------------------- secrets, tokens


def test_join_token_only_through_secret_key_ref(rendered: dict[str, Rendered]) -> None:
    for name, expect in (
        ("default", (f"{RELEASE}-join-token", "token")),
        ("existing-secrets", ("my-join", "join-token")),
        ("chart-secrets", (f"{RELEASE}-join-token", "token")),
    ):
        agent = container(agent_pod(rendered[name]), "agent")
        (token_env,) = [e for e in agent["env"] if e["name"] == "IPSECD_JOIN_TOKEN"]
        assert token_env == {
            "name": "IPSECD_JOIN_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": expect[0], "key": expect[1]}},
        }
        argv = agent["command"] + agent["args"]
        assert not [a for a in argv if a.startswith(("--join=", "--join-file")) or a == "--join"]
        assert flag(agent["args"], "--join-port") == "7481"
    secret = rendered["chart-secrets"].one("Secret", f"{RELEASE}-join-token")
    assert base64.b64decode(secret["data"]["token"]).decode() == TOKEN


def test_no_secret_outside_secrets(rendered: dict[str, Rendered], tmp_path: Path) -> None:
    chart = tmp_path / "ipsecd"
    shutil.copytree(CHART, chart)
    (chart / "dashboards" / "probe.json").write_text(json.dumps({"title": "probe"}))
    r = render(VALUE_SETS["chart-secrets"], chart=chart)
    assert r.kinds("ConfigMap"), "the dashboard ConfigMap should be there"
    encoded = [base64.b64encode(s.encode()).decode() for s in SECRET_SENTINELS]
    for text, doc in r.texts:
        if doc["kind"] == "Secret":
            continue
        for needle in SECRET_SENTINELS + encoded:
            assert needle not in text, f"{doc['kind']}/{doc['metadata']['name']} holds a secret"
    assert not any(s in r.notes for s in SECRET_SENTINELS)
    pki = r.one("Secret", f"{RELEASE}-pki")
    # no CA key in the Secret every replica names
    assert sorted(pki["data"]) == ["ca.pem", "crl.pem", "envelope.key", "server.key", "server.pem"]
    assert base64.b64decode(pki["data"]["envelope.key"]) == b"E" * 32
    assert base64.b64decode(pki["data"]["server.key"]).decode() == PKI["serverKey"]
    ca = r.one("Secret", f"{RELEASE}-ca")
    assert sorted(ca["data"]) == ["ca.key", "certs.json"]
    assert base64.b64decode(ca["data"]["ca.key"]).decode() == PKI["caKey"]
    assert base64.b64decode(ca["data"]["certs.json"]).decode() == PKI["caRecords"]


def test_pki_secret_reaches_the_controller_only(rendered: dict[str, Rendered]) -> None:
    for name in ("default", "existing-secrets", "chart-secrets"):
        r = rendered[name]
        secret = "my-ipsecd-pki" if name == "existing-secrets" else f"{RELEASE}-pki"
        ca_secret = "my-ipsecd-ca" if name == "existing-secrets" else f"{RELEASE}-ca"
        for pod in controller_pods(r):
            volumes = {v["name"]: v for v in pod["volumes"]}
            assert volumes["pki"]["secret"]["secretName"] == secret
        # a pod referencing a Secret lets its node's kubelet read all of it: never the
        # agent's pods (they would put the keys on every node), and the CA key only in
        # the signer's pod
        for doc in r.docs:
            if doc["kind"] in ("DaemonSet",) or doc["metadata"]["name"].endswith("etcd"):
                assert secret not in json.dumps(doc), doc["kind"]
            if doc["kind"] in ("DaemonSet", "StatefulSet"):
                names = secrets_named(doc["spec"]["template"]["spec"])
                is_signer = doc["metadata"]["name"] == f"{RELEASE}-signer"
                assert (ca_secret in names) == is_signer, doc["metadata"]["name"]
        signer_volumes = {v["name"]: v for v in signer_pod(r)["volumes"]}
        assert signer_volumes["ca"]["secret"]["secretName"] == ca_secret
    assert not rendered["default"].kinds("Secret")
    assert not rendered["existing-secrets"].kinds("Secret")
    for sts in ("controller", "signer"):
        annotations = rendered["chart-secrets"].one("StatefulSet", f"{RELEASE}-{sts}")["spec"][
            "template"
        ]["metadata"]["annotations"]
        assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/pki"])


# --------------------------------------------------------------------- controller


def test_controller_replicas_placement_and_security(rendered: dict[str, Rendered]) -> None:
    r = rendered["default"]
    sts = r.one("StatefulSet", f"{RELEASE}-controller")
    signer = r.one("StatefulSet", f"{RELEASE}-signer")
    assert sts["spec"]["replicas"] == 1
    assert signer["spec"]["replicas"] == 1
    for s in (sts, signer):
        assert s["spec"]["serviceName"] == f"{RELEASE}-controller-peers"
    # disjoint selectors: neither StatefulSet may claim the other's pods
    assert sts["spec"]["selector"]["matchLabels"]["ipsecd.io/signer"] == "false"
    assert signer["spec"]["selector"]["matchLabels"]["ipsecd.io/signer"] == "true"
    for pod in controller_pods(r):
        anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
        assert "ipsecd.io/signer" not in anti[0]["podAffinityTerm"]["labelSelector"]["matchLabels"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for c in pod["containers"] + pod["initContainers"]:
            sc = c["securityContext"]
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
        ctl = container(pod, "controller")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert ctl[probe]["tcpSocket"]["port"] == "grpc"
        assert ctl["resources"]["requests"] and ctl["resources"]["limits"]["memory"]
        args = ctl["args"]
        assert flag(args, "--listen") == "0.0.0.0:7480"
        assert flag(args, "--replica-id") == "$(POD_NAME)"
        assert flag(args, "--advertise") == (
            f"$(POD_NAME).{RELEASE}-controller-peers.{NAMESPACE}.svc.cluster.local:7480"
        )
        assert flag(args, "--state-dir") == "/var/lib/ipsecd-controller"
        assert flag(args, "--envelope-key") == "/var/lib/ipsecd-controller/envelope.key"
        assert flag(args, "--metrics-listen") == "0.0.0.0:9471"
        assert flag(args, "--log-format") == "text"
        assert args[args.index("-m") + 1] == "default"
        assert "--insecure" not in args
    assert flag(container(controller_pod(r), "controller")["args"], "--join-listen") == "none"
    assert flag(container(signer_pod(r), "controller")["args"], "--join-listen") == "0.0.0.0:7481"
    (claim,) = signer["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert "volumeClaimTemplates" not in sts["spec"]
    peers = r.one("Service", f"{RELEASE}-controller-peers")
    assert peers["spec"]["clusterIP"] == "None"
    pdb = r.one("PodDisruptionBudget", f"{RELEASE}-controller")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "ipsecd.io/signer" not in pdb["spec"]["selector"]["matchLabels"]

    small = rendered["small"]
    assert not [d for d in small.kinds("StatefulSet") if d["metadata"]["name"].endswith("signer")]
    small_pod = controller_pod(small)
    assert "initContainers" not in small_pod  # no pki, plaintext etcd: nothing to copy
    small_args = container(small_pod, "controller")["args"]
    assert "--insecure" in small_args and "--etcd-plaintext" in small_args
    assert flag(small_args, "--listen") == "[::]:7480"
    assert flag(small_args, "--join-listen") is None and flag(small_args, "--envelope-key") is None
    hard = small_pod["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert hard[0]["topologyKey"] == "kubernetes.io/hostname"
    assert [p["name"] for p in small.one("Service", f"{RELEASE}-controller")["spec"]["ports"]] == [
        "grpc"
    ]

    # no replica without the CA key: the signer alone
    alone = rendered["external-etcd-plaintext"]
    assert not [
        d for d in alone.kinds("StatefulSet") if d["metadata"]["name"].endswith("-controller")
    ]
    assert flag(container(signer_pod(alone), "controller")["args"], "--log-format") == "json"


def _named_port(pod: dict[str, Any], name: str) -> int | None:
    """What Kubernetes' EndpointSlice controller does for a Service's named targetPort
    (FindPort): the port of that name in the pod's containers, else the pod is left
    out of that Service port."""
    for c in pod["containers"]:
        for port in c.get("ports", []):
            if port["name"] == name:
                return int(port["containerPort"])
    return None


def test_joins_reach_the_signer_alone(rendered: dict[str, Rendered]) -> None:
    """The agents dial one Service; its join port resolves on the signer's pod only
    (the replicas without the CA key open no join port: --join-listen none)."""
    for name, port in (("default", 7481), ("external-etcd-plaintext", 7600)):
        r = rendered[name]
        svc = r.one("Service", f"{RELEASE}-controller")
        ports = {p["name"]: p for p in svc["spec"]["ports"]}
        assert ports["grpc"] == {
            "name": "grpc",
            "port": 7480,
            "targetPort": "grpc",
            "protocol": "TCP",
        }
        assert ports["join"] == {
            "name": "join",
            "port": port,
            "targetPort": "join",
            "protocol": "TCP",
        }
        selector = svc["spec"]["selector"]
        selected = [
            d
            for d in r.kinds("StatefulSet")
            if all(
                d["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in selector.items()
            )
        ]
        assert {d["metadata"]["name"] for d in selected} == {
            d["metadata"]["name"]
            for d in r.kinds("StatefulSet")
            if "etcd" not in d["metadata"]["name"]
        }
        for sts in selected:
            pod = sts["spec"]["template"]["spec"]
            is_signer = sts["metadata"]["name"] == f"{RELEASE}-signer"
            assert _named_port(pod, "grpc") == 7480
            assert _named_port(pod, "join") == (port if is_signer else None), sts["metadata"][
                "name"
            ]
            listen = flag(container(pod, "controller")["args"], "--join-listen")
            assert listen == (f"0.0.0.0:{port}" if is_signer else "none")
        agent = container(agent_pod(r), "agent")
        host = flag(agent["args"], "--controller")
        assert host == f"{RELEASE}-controller.{NAMESPACE}.svc:7480"
        assert flag(agent["args"], "--join-port") == str(port)


def _state_dir_script(r: Rendered, sts: str = "controller") -> str:
    pod = r.one("StatefulSet", f"{RELEASE}-{sts}")["spec"]["template"]["spec"]
    init = next(c for c in pod["initContainers"] if c["name"] == "state-dir")
    assert init["command"][:2] == ["/bin/sh", "-ec"]
    script: str = init["command"][2]
    return script


def _as_secret_volume(files: dict[str, Path], volume: Path) -> None:
    """What the kubelet mounts from a Secret with these keys: one file per key,
    group-readable (fsGroup), behind ..data links."""
    data = volume / "..2025_01_01_00_00_00.000000000"
    data.mkdir(parents=True)
    for key, source in files.items():
        shutil.copyfile(source, data / key)
        os.chmod(data / key, 0o440)
        os.symlink(f"..data/{key}", volume / key)
    os.symlink(data.name, volume / "..data")


PKI_KEYS = {
    "ca.pem": "pki/ca.pem",
    "server.pem": "pki/server.pem",
    "server.key": "pki/server.key",
    "crl.pem": "pki/crl.pem",
    "envelope.key": "envelope.key",
}
CA_KEYS = {"ca.key": "pki/ca.key", "certs.json": "pki/certs.json"}
ETCD_CLIENT_KEYS = {"ca.pem": "ca.pem", "client.pem": "client.pem", "client.key": "client.key"}


class Pod:
    """A controller pod's file system for its state-dir script, in a temporary folder:
    the Secret volumes made from a real `ipsecd-controller init` state directory and a
    real etcd PKI, the memory state directory, the signer's volume."""

    def __init__(self, base: Path, state: Path, etcd_pki: Path, *, without: str = "") -> None:
        self.base = base
        self.secrets = base / "secrets"
        pki = {k: state / v for k, v in PKI_KEYS.items() if k != without}
        if without == "+ca.key":
            pki["ca.key"] = state / "pki" / "ca.key"
        _as_secret_volume(pki, self.secrets / "pki")
        _as_secret_volume(
            {k: state / v for k, v in CA_KEYS.items() if k != without}, self.secrets / "ca"
        )
        _as_secret_volume(
            {k: etcd_pki / v for k, v in ETCD_CLIENT_KEYS.items()}, self.secrets / "etcd"
        )
        self.volume = base / "ca-volume"  # the signer's PersistentVolumeClaim
        self.volume.mkdir()
        self.dest = base / "state"

    def run(self, script: str) -> subprocess.CompletedProcess[str]:
        """A new pod on the same volume: a fresh memory state directory."""
        if self.dest.exists():
            shutil.rmtree(self.dest)
        self.dest.mkdir()
        for path, here in (
            ("/etc/ipsecd/pki-secret", self.secrets / "pki"),
            ("/etc/ipsecd/ca-secret", self.secrets / "ca"),
            ("/etc/ipsecd/etcd-secret", self.secrets / "etcd"),
            ("/var/lib/ipsecd-controller", self.dest),
            ("/var/lib/ipsecd-ca", self.volume),
        ):
            assert path in script or path.endswith(("ca-secret", "ipsecd-ca")), path
            script = script.replace(path, str(here))
        return subprocess.run(
            ["/bin/sh", "-ec", script], capture_output=True, text=True, check=False
        )


@pytest.fixture(scope="module")
def init_state(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real `ipsecd-controller init` state directory and a real bundled-etcd PKI
    from charts/ipsecd/scripts/etcd-certs.py."""
    from controller.statedir import init_state as make_state

    base = tmp_path_factory.mktemp("chart-init")
    state = base / "init"
    make_state(state, listen=["0.0.0.0:7480"])
    done = subprocess.run(
        [
            sys.executable,
            str(CHART / "scripts" / "etcd-certs.py"),
            f"--fullname={RELEASE}",
            f"--namespace={NAMESPACE}",
            f"--out={base / 'etcd-pki'}",
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return state, base / "etcd-pki"


def test_state_dir_script_makes_a_directory_the_controller_accepts(
    rendered: dict[str, Rendered], init_state: tuple[Path, Path], tmp_path: Path
) -> None:
    """A replica without the CA key: serving key and envelope key 0600 in memory, the
    etcd client key 0600, no CA key; the controller's own checks accept it."""
    from controller.etcd_tls import load_client_tls
    from controller.main import build_parser, envelope, external_etcd_tls
    from controller.secretstore import Envelope

    state, etcd_pki = init_state
    pod = Pod(tmp_path, state, etcd_pki)
    # as the volume itself: group-readable keys are refused by the controller
    bad = tmp_path / "asis"
    (bad / "pki").mkdir(parents=True)
    for key in ("ca.pem", "server.pem", "server.key", "crl.pem"):
        os.symlink(pod.secrets / "pki" / key, bad / "pki" / key)
    with pytest.raises(CaError, match="chmod 600"):
        load_serving(bad)
    with pytest.raises(CaError, match="chmod 600"):
        load_client_tls(
            pod.secrets / "etcd" / "ca.pem",
            pod.secrets / "etcd" / "client.pem",
            pod.secrets / "etcd" / "client.key",
        )

    script = _state_dir_script(rendered["default"])
    done = pod.run(script)
    assert done.returncode == 0, done.stderr
    dest = pod.dest
    for rel in ("pki/server.key", "envelope.key", "etcd-client/client.key"):
        assert (dest / rel).stat().st_mode & 0o777 == 0o600, rel
    assert (dest / "pki" / "server.key").read_bytes() == (state / "pki/server.key").read_bytes()
    assert (dest / "envelope.key").read_bytes() == (state / "envelope.key").read_bytes()
    assert not (dest / "pki" / "ca.key").exists()  # never on a replica without the CA role
    assert (dest / "pki" / "crl.pem").is_symlink()
    assert not list(pod.volume.iterdir())  # not the signer: its volume is not used
    material = load_serving(dest)
    assert material.server_key_pem == (state / "pki" / "server.key").read_bytes()

    # the controller's own parser and checks, with the rendered flags' paths moved here
    args = container(controller_pod(rendered["default"]), "controller")["args"]
    args = [a.replace("/var/lib/ipsecd-controller", str(dest)) for a in args]
    # the Service name resolves in the cluster only (parse_urls resolves it)
    args = [a.replace(f"{RELEASE}-etcd.{NAMESPACE}.svc", "127.0.0.1") for a in args]
    parsed = build_parser().parse_args(args)
    assert isinstance(envelope(parsed), Envelope)
    tls = external_etcd_tls(parsed)
    assert tls is not None and tls.client_auth


def test_signer_state_dir_keeps_the_ca_index_on_its_volume(
    rendered: dict[str, Rendered], init_state: tuple[Path, Path], tmp_path: Path
) -> None:
    """The signer: the CA key 0600 in memory only, certs.json and the CRL on its
    volume, seeded at the first start and kept by the next pods."""
    from controller.ca import Role
    from controller.joining import crl_number
    from controller.statedir import StateDir, list_records, revoke, write_crl

    state, etcd_pki = init_state
    pod = Pod(tmp_path, state, etcd_pki)
    script = _state_dir_script(rendered["default"], "signer")
    done = pod.run(script)
    assert done.returncode == 0, done.stderr
    dest, vol = pod.dest, pod.volume
    assert (dest / "keys" / "ca.key").stat().st_mode & 0o777 == 0o600
    assert (dest / "envelope.key").stat().st_mode & 0o777 == 0o600
    # on the volume: links to the memory copies, never a key's bytes
    for key in ("ca.key", "server.key"):
        assert (vol / "pki" / key).is_symlink()
        assert os.readlink(vol / "pki" / key) == str(dest / "keys" / key)
    assert (vol / "pki" / "certs.json").read_bytes() == (state / "pki/certs.json").read_bytes()
    sd = StateDir(dest)
    sd.load_ca()  # the controller's check of the CA key (0600, matching ca.pem)
    load_serving(dest)
    first = crl_number((dest / "pki" / "crl.pem").read_bytes())
    # the signer revokes (node removal does this): the index and CRL on the volume change
    admin = [r for r in list_records(dest) if r.role == Role.ADMIN.value]
    assert admin, "init records the first admin's certificate"
    assert revoke(dest, role=Role.ADMIN, name=admin[0].name)
    assert crl_number((vol / "pki" / "crl.pem").read_bytes()) == first + 1

    # a new pod (fresh memory) on the same volume keeps them, and the keys again
    done = pod.run(script)
    assert done.returncode == 0, done.stderr
    assert crl_number((dest / "pki" / "crl.pem").read_bytes()) == first + 1
    assert any(r.revoked for r in list_records(dest) if r.role == Role.ADMIN.value)
    assert write_crl(dest) == first + 2
    assert (dest / "keys" / "ca.key").read_bytes() == (state / "pki" / "ca.key").read_bytes()


@pytest.mark.parametrize(
    ("sts", "without", "message"),
    [
        ("controller", "server.key", "Secret my-ipsecd-pki has no key server.key"),
        ("signer", "ca.key", "Secret my-ipsecd-ca has no key ca.key"),
        ("signer", "certs.json", "Secret my-ipsecd-ca has no key certs.json"),
        ("controller", "+ca.key", "Secret my-ipsecd-pki holds ca.key"),
    ],
)
def test_state_dir_script_names_a_missing_or_misplaced_key(
    rendered: dict[str, Rendered],
    init_state: tuple[Path, Path],
    tmp_path: Path,
    sts: str,
    without: str,
    message: str,
) -> None:
    state, etcd_pki = init_state
    pod = Pod(tmp_path, state, etcd_pki, without=without)
    done = pod.run(_state_dir_script(rendered["existing-secrets"], sts))
    assert done.returncode == 1
    assert message in done.stderr
    assert "charts/ipsecd/README.md" in done.stderr or "ipsecd-controller init" in done.stderr
    assert not (pod.dest / "pki").exists()
    assert not (pod.dest / "keys").exists()


def _notes_init_command(notes: str) -> list[str]:
    lines = notes.splitlines()
    start = next(
        i for i, line in enumerate(lines) if line.strip().startswith("ipsecd-controller init")
    )
    text = ""
    for line in lines[start:]:
        text += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            break
    return shlex.split(text)


def _handshake(port: int, conf: dict[str, str], name: str, timeout: float = 30.0) -> bool:
    creds = grpc.ssl_channel_credentials(
        conf["ca"].encode(), conf["key"].encode(), conf["cert"].encode()
    )
    channel = grpc.secure_channel(
        f"127.0.0.1:{port}", creds, options=[("grpc.ssl_target_name_override", name)]
    )
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
        return True
    except grpc.FutureTimeoutError:
        return False
    finally:
        channel.close()


def test_notes_init_command_names_every_address_the_pods_dial(
    rendered: dict[str, Rendered], tmp_path: Path
) -> None:
    """NOTES.txt's `ipsecd-controller init` makes a serving certificate that passes
    gRPC's TLS check for the agents' --controller and each replica's --advertise."""
    r = rendered["default"]
    argv = _notes_init_command(r.notes)
    assert argv[:2] == ["ipsecd-controller", "init"]
    state = tmp_path / "ipsecd-state"
    argv = [a.replace("./ipsecd-state", str(state)) for a in argv]
    done = subprocess.run(
        [sys.executable, "-m", "controller.main", *argv[1:]],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    conf = json.loads((state / "admin.conf").read_text())

    agent_target = flag(container(agent_pod(r), "agent")["args"], "--controller")
    advertise = flag(container(controller_pod(r), "controller")["args"], "--advertise")
    assert agent_target and advertise
    names = [
        agent_target.rsplit(":", 1)[0],
        advertise.rsplit(":", 1)[0].replace("$(POD_NAME)", f"{RELEASE}-controller-1"),
        "localhost",  # kubectl port-forward, as NOTES.txt says
    ]
    pki = state / "pki"
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(1))
    port = server.add_secure_port(
        "127.0.0.1:0",
        grpc.ssl_server_credentials(
            [((pki / "server.key").read_bytes(), (pki / "server.pem").read_bytes())],
            root_certificates=(pki / "ca.pem").read_bytes(),
            require_client_auth=True,
        ),
    )
    server.start()
    try:
        for name in names:
            assert _handshake(port, conf, name), name
        # not vacuous: another name is refused (gRPC retries a refused handshake until
        # the timeout, so a short one; a slow machine cannot make this fail)
        assert not _handshake(port, conf, "ipsecd-controller.elsewhere.svc", timeout=2.0)
    finally:
        server.stop(None)


# -------------------------------------------------------------------------- etcd


def test_bundled_etcd(rendered: dict[str, Rendered]) -> None:
    r = rendered["default"]
    sts = r.one("StatefulSet", f"{RELEASE}-etcd")
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    headless = r.one("Service", f"{RELEASE}-etcd-headless")
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    pod = sts["spec"]["template"]["spec"]
    etcd = container(pod, "etcd")
    args = etcd["args"]
    cluster = flag(args, "--initial-cluster")
    assert cluster is not None
    domain = f"{RELEASE}-etcd-headless.{NAMESPACE}.svc.cluster.local"
    assert cluster.split(",") == [
        f"{RELEASE}-etcd-{i}=https://{RELEASE}-etcd-{i}.{domain}:2380" for i in range(3)
    ]
    # TLS with client certificates on both ports, the members' files from their Secret
    assert flag(args, "--listen-client-urls") == "https://0.0.0.0:2379"
    assert flag(args, "--listen-peer-urls") == "https://0.0.0.0:2380"
    assert "--client-cert-auth" in args and "--peer-client-cert-auth" in args
    tls = {m["name"]: m["mountPath"] for m in etcd["volumeMounts"]}["tls"]
    for name in ("--cert-file", "--peer-cert-file"):
        assert flag(args, name) == f"{tls}/server.pem"
    for name in ("--key-file", "--peer-key-file"):
        assert flag(args, name) == f"{tls}/server.key"
    for name in ("--trusted-ca-file", "--peer-trusted-ca-file"):
        assert flag(args, name) == f"{tls}/ca.pem"
    assert secrets_named(pod) == {f"{RELEASE}-etcd-server"}
    # the kubelet's probe presents no client certificate: the plain-HTTP metrics port
    assert flag(args, "--listen-metrics-urls") == "http://0.0.0.0:2381"
    assert etcd["readinessProbe"]["httpGet"] == {"path": "/health", "port": "metrics"}
    assert _named_port(pod, "metrics") == 2381
    assert etcd["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert r.one("PodDisruptionBudget", f"{RELEASE}-etcd")["spec"]["maxUnavailable"] == 1
    assert r.one("NetworkPolicy", f"{RELEASE}-etcd")
    for ctl_pod in controller_pods(r):
        ctl = container(ctl_pod, "controller")
        assert flag(ctl["args"], "--etcd") == f"https://{RELEASE}-etcd.{NAMESPACE}.svc:2379"
        state = "/var/lib/ipsecd-controller/etcd-client"
        assert flag(ctl["args"], "--etcd-cacert") == f"{state}/ca.pem"
        assert flag(ctl["args"], "--etcd-cert") == f"{state}/client.pem"
        assert flag(ctl["args"], "--etcd-key") == f"{state}/client.key"
        assert "--etcd-plaintext" not in ctl["args"]
        assert flag(ctl["args"], "--key-root") == "/ipsecd/"
        assert f"{RELEASE}-etcd-client" in secrets_named(ctl_pod)
        assert f"{RELEASE}-etcd-server" not in secrets_named(ctl_pod)

    one = rendered["small"]
    assert one.one("StatefulSet", f"{RELEASE}-etcd")["spec"]["replicas"] == 1
    assert not [p for p in one.kinds("PodDisruptionBudget") if "etcd" in p["metadata"]["name"]]
    assert not one.kinds("NetworkPolicy")
    # etcd.plaintext: http, no TLS flag, no Secret, and the controller says it knows
    plain = one.one("StatefulSet", f"{RELEASE}-etcd")["spec"]["template"]["spec"]
    plain_args = container(plain, "etcd")["args"]
    assert flag(plain_args, "--listen-client-urls") == "http://0.0.0.0:2379"
    assert not [a for a in plain_args if "cert" in a or "tls" in a]
    assert secrets_named(plain) == set()
    ctl_args = container(controller_pod(one), "controller")["args"]
    assert flag(ctl_args, "--etcd") == f"http://{RELEASE}-etcd.{NAMESPACE}.svc:2379"
    assert "--etcd-plaintext" in ctl_args
    assert "WARNING: etcd.plaintext=true" in one.notes
    assert "WARNING: etcd.plaintext" not in r.notes


def test_external_etcd(rendered: dict[str, Rendered]) -> None:
    r = rendered["external-etcd"]
    assert not [d for d in r.docs if "etcd" in d["metadata"]["name"]]
    for pod in controller_pods(r):
        args = container(pod, "controller")["args"]
        assert flag(args, "--etcd") == "https://10.0.0.5:2379,https://10.0.0.6:2379"
        assert flag(args, "--etcd-server-name") == "etcd.corp.example"
        assert flag(args, "--etcd-key") == "/var/lib/ipsecd-controller/etcd-client/client.key"
        assert "--etcd-plaintext" not in args
        assert "corp-etcd-client" in secrets_named(pod)
    plain = rendered["external-etcd-plaintext"]
    args = container(signer_pod(plain), "controller")["args"]
    assert flag(args, "--etcd") == "http://10.0.0.5:2379"
    assert "--etcd-plaintext" in args and flag(args, "--etcd-cacert") is None
    assert "WARNING: etcd.plaintext=true" in plain.notes


# ----------------------------------------------------------------------- metrics


def test_metrics_services_and_service_monitor(rendered: dict[str, Rendered]) -> None:
    r = rendered["metrics-servicemonitor"]
    (monitor,) = r.kinds("ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    selector = monitor["spec"]["selector"]["matchLabels"]
    matched = [
        s
        for s in r.kinds("Service")
        if all(s["metadata"]["labels"].get(k) == v for k, v in selector.items())
    ]
    ports = {s["metadata"]["name"]: s["spec"]["ports"] for s in matched}
    assert ports == {
        f"{RELEASE}-agent-metrics": [
            {"name": "metrics", "port": 9470, "targetPort": "metrics", "protocol": "TCP"}
        ],
        f"{RELEASE}-controller-metrics": [
            {"name": "metrics", "port": 9471, "targetPort": "metrics", "protocol": "TCP"}
        ],
    }
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    for pod, name, port in (
        (agent_pod(r), "agent", 9470),
        (controller_pod(r), "controller", 9471),
    ):
        c = container(pod, name)
        assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in c["ports"]
    assert not rendered["default"].kinds("ServiceMonitor")
    assert not [s for s in rendered["small"].kinds("Service") if "metrics" in json.dumps(s)]


# -------------------------------------------------------------------- dashboards


@pytest.fixture
def chart_copy(tmp_path: Path) -> Iterator[Path]:
    chart = tmp_path / "ipsecd"
    shutil.copytree(CHART, chart)
    yield chart


def test_dashboards_config_map(chart_copy: Path) -> None:
    for old in (chart_copy / "dashboards").glob("*.json"):
        old.unlink()
    assert not render(chart=chart_copy).kinds("ConfigMap")  # none: no ConfigMap
    board = {"title": "ipsecd", "panels": [{"targets": [{"legendFormat": "{{node}}"}]}]}
    (chart_copy / "dashboards" / "ipsecd.json").write_text(json.dumps(board))
    (cm,) = render(chart=chart_copy).kinds("ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["ipsecd.json"]) == board  # not templated
    assert not render({"dashboards": {"enabled": False}}, chart=chart_copy).kinds("ConfigMap")


def test_repository_dashboards_are_json(rendered: dict[str, Rendered]) -> None:
    boards = sorted((CHART / "dashboards").glob("*.json"))
    cms = rendered["default"].kinds("ConfigMap")
    assert len(cms) == (1 if boards else 0)
    for board in boards:
        assert json.loads(cms[0]["data"][board.name]) == json.loads(board.read_text())


# ------------------------------------------------------------ values, schema, errors


def test_schema_rejects_a_wrong_type_with_the_path() -> None:
    with pytest.raises(helm.HelmValuesError) as err:
        render({"controller": {"replicas": "two"}})
    assert "/controller/replicas" in str(err.value)
    assert "got string, want integer" in str(err.value)


def test_schema_rejects_unknown_keys_and_bad_enums() -> None:
    with pytest.raises(helm.HelmValuesError, match="additional properties 'replica' not allowed"):
        render({"controller": {"replica": 3}})
    with pytest.raises(helm.HelmValuesError, match="/etcd/mode"):
        render({"etcd": {"mode": "embedded"}})
    with pytest.raises(helm.HelmValuesError, match="/agent/nodeAddresses"):
        render({"agent": {"nodeAddresses": "all"}})
    with pytest.raises(helm.HelmValuesError, match="/pki/envelopeKeyBase64"):
        render({"pki": {"envelopeKeyBase64": "not base64!"}})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"etcd": {"mode": "external"}}, "etcd.external.endpoints is empty"),
        (
            {"etcd": {"external": {"endpoints": ["http://10.0.0.5:2379"]}}},
            "set etcd.mode=external",
        ),
        ({"pki": {"create": True}}, "pki.caCert is empty: pass the file made by"),
        ({"pki": {"create": True, "existingSecret": "x"}}, "exclude each other"),
        ({"joinToken": {"create": True}}, "--set-file joinToken.value=PATH"),
        ({"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}}, "metrics.enabled"),
        (
            {"etcd": {"mode": "external", "external": {"endpoints": ["http://10.0.0.5:2379"]}}},
            "is plaintext http://: give https:// endpoints",
        ),
        (
            {
                "etcd": {
                    "mode": "external",
                    "plaintext": True,
                    "external": {"endpoints": ["https://10.0.0.5:2379"]},
                }
            },
            "is https:// but etcd.plaintext is true",
        ),
        ({"etcd": {"external": {"serverName": "etcd.example"}}}, "drop it or set etcd.mode"),
        ({"controller": {"joinPort": 7480}}, "controller.joinPort: 7480 is the API port"),
        ({"insecure": True, "controller": {"replicas": 0}}, "controller.replicas must be"),
        (
            {"pki": {"create": True, **{k: v for k, v in PKI.items() if k != "caRecords"}}},
            "pki.caRecords is empty",
        ),
        ({"pki": {"create": True, "caExistingSecret": "x"}}, "exclude each other"),
    ],
)
def test_inconsistent_values_fail_with_the_fix(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmRenderError) as err:
        render(values)
    assert message in str(err.value)


def test_values_file_is_what_the_chart_loads() -> None:
    with helm.Chart.load(CHART) as chart:
        assert chart.values == yaml.safe_load((CHART / "values.yaml").read_text())
        assert chart.metadata["kubeVersion"] == f">={K8S_VERSION}-0"
        chart.validate_schema(merge(chart.values, VALUE_SETS["chart-secrets"]))


# ------------------------------------------------- the flags against the daemons' parsers


def _expand(argv: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion of command and args from the container's env."""
    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env[m.group(1)], a) for a in argv]


def _pod_env(c: dict[str, Any]) -> dict[str, str]:
    """Stand-ins for the downward API's values of a container's env."""
    fake = {
        "metadata.name": f"{RELEASE}-controller-0",
        "spec.nodeName": "node-a",
        "status.hostIP": "10.0.0.1",
        "status.hostIPs": "10.0.0.1,fd00::1",
    }
    return {
        e["name"]: fake[e["valueFrom"]["fieldRef"]["fieldPath"]]
        for e in c.get("env", [])
        if "fieldRef" in e.get("valueFrom", {})
    }


def _parse(parser: Any, argv: list[str], capsys: pytest.CaptureFixture[str]) -> Any:
    try:
        return parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"{parser.prog} refuses {argv}: {capsys.readouterr().err}")


def _agent_argv(c: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The ipsecd command line the agent's container runs (through agent.nodelabels,
    which execs ipsecd with --labels)."""
    from agent import nodelabels

    argv = _expand(c["command"] + c["args"], _pod_env(c))
    if argv[:3] == ["python3", "-m", "agent.nodelabels"]:
        wrapper = _parse(nodelabels.build_parser(), argv[3:], capsys)
        command = list(wrapper.command)
        assert command[0] == "--"
        argv = [*command[1:], "--labels", "role=web"]
    assert argv[0] == "ipsecd"
    return argv[1:]


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_rendered_flags_are_what_the_daemons_accept(
    rendered: dict[str, Rendered],
    name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every flag the templates pass, through the real argparse parsers and option
    checks of agent/main.py, agent/nodelabels.py and controller/main.py: a renamed or
    dropped flag, a wrong value or a combination the daemons refuse fails here."""
    from agent.main import build_parser as agent_parser
    from agent.main import options_from
    from controller.main import build_parser as controller_parser
    from controller.main import check_args, join_address
    from ipsecd.jointoken import JoinToken

    r = rendered[name]
    insecure = bool(VALUE_SETS[name].get("insecure"))
    agent = container(agent_pod(r), "agent")
    argv = _agent_argv(agent, capsys)
    args = _parse(agent_parser(), argv, capsys)
    # the token as the pod gets it: its Secret through the env (a well-formed one)
    env_names = {e["name"] for e in agent["env"]}
    if "IPSECD_JOIN_TOKEN" in env_names:
        token = JoinToken("0123456789", "A" * 32, "B" * 43)
        monkeypatch.setenv("IPSECD_JOIN_TOKEN", f"ipsecd1.{token.id}.{token.secret}.{token.pin}")
    else:
        monkeypatch.delenv("IPSECD_JOIN_TOKEN", raising=False)
    args.state_dir = str(tmp_path / "agent-state")  # the node's folder is not this machine's
    opts = options_from(args)
    assert opts.controllers == (f"{RELEASE}-controller.{NAMESPACE}.svc:7480",)
    assert opts.node == "node-a"
    assert opts.insecure == insecure
    assert (opts.join_token is not None) == (not insecure)
    assert opts.joined == (not insecure)

    for pod in controller_pods(r):
        ctl = container(pod, "controller")
        assert ctl["command"] == ["ipsecd-controller"]
        parser = controller_parser()
        cargs = _parse(parser, _expand(ctl["args"], _pod_env(ctl)), capsys)
        try:
            check_args(parser, cargs)
        except SystemExit:
            pytest.fail(f"ipsecd-controller refuses {ctl['args']}: {capsys.readouterr().err}")
        assert cargs.insecure == insecure
        at = join_address(cargs)
        if _named_port(pod, "join") is None:
            assert insecure or at is None  # a replica without the CA key: no join port
        else:
            assert at is not None and int(at.rsplit(":", 1)[1]) == _named_port(pod, "join")
            assert opts.join_port == _named_port(pod, "join")


def test_flag_check_is_not_vacuous(
    rendered: dict[str, Rendered], capsys: pytest.CaptureFixture[str]
) -> None:
    """A misspelt flag in the rendered command lines is refused by the same parsers."""
    from agent.main import build_parser as agent_parser
    from controller.main import build_parser as controller_parser

    r = rendered["default"]
    argv = [
        a.replace("--join-port=", "--join-prt=")
        for a in _agent_argv(container(agent_pod(r), "agent"), capsys)
    ]
    with pytest.raises(SystemExit):
        agent_parser().parse_args(argv)
    args = container(signer_pod(r), "controller")["args"]
    with pytest.raises(SystemExit):
        controller_parser().parse_args([a.replace("--join-listen", "--join-listn") for a in args])
    assert "unrecognized arguments" in capsys.readouterr().err


def test_notes_give_the_join_token_steps(rendered: dict[str, Rendered]) -> None:
    notes = rendered["default"].notes
    lines = [line.strip() for line in notes.splitlines()]
    create = next(line for line in lines if line.startswith("ipsecctl token create"))
    argv = shlex.split(create.removesuffix("\\"), posix=True)
    assert "--ttl" in argv and "--uses" in argv
    secret = f"create secret generic {RELEASE}-join-token --from-file=token=join-token.txt"
    assert f"kubectl -n {NAMESPACE} {secret}" in lines
    assert f"kubectl -n {NAMESPACE} port-forward pod/{RELEASE}-signer-0 7480:7480" in lines
    assert any(f"create secret generic {RELEASE}-ca" in line for line in lines)
    assert any("etcd-certs.py --fullname ipsecd --namespace ipsec-system" in line for line in lines)
    # the token create flags are ipsecctl's
    from controller import cli

    parser = cli.build_parser()
    parsed = parser.parse_args(
        ["token", "create", "--ttl", "24h", "--uses", "8", "--description", "x"]
    )
    assert parsed.uses == 8
