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
    "envelopeKeyBase64": ENVELOPE,
}
SECRET_SENTINELS = [TOKEN, "CA-KEY-SENTINEL", "SERVER-KEY-SENTINEL", ENVELOPE]

VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "external-etcd": {
        "etcd": {
            "mode": "external",
            "external": {"endpoints": ["http://10.0.0.5:2379", "http://10.0.0.6:2379"]},
        }
    },
    "existing-secrets": {
        "pki": {"existingSecret": "my-ipsecd-pki"},
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
        "etcd": {"bundled": {"replicas": 1, "networkPolicy": {"enabled": False}}},
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
        assert not any("--join" in a for a in agent["command"] + agent["args"])
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
    assert sorted(pki["data"]) == [
        "ca.key",
        "ca.pem",
        "crl.pem",
        "envelope.key",
        "server.key",
        "server.pem",
    ]
    assert base64.b64decode(pki["data"]["envelope.key"]) == b"E" * 32
    assert base64.b64decode(pki["data"]["server.key"]).decode() == PKI["serverKey"]


def test_pki_secret_reaches_the_controller_only(rendered: dict[str, Rendered]) -> None:
    for name in ("default", "existing-secrets", "chart-secrets"):
        r = rendered[name]
        secret = "my-ipsecd-pki" if name == "existing-secrets" else f"{RELEASE}-pki"
        ctl_volumes = {v["name"]: v for v in controller_pod(r)["volumes"]}
        assert ctl_volumes["pki"]["secret"]["secretName"] == secret
        # a pod referencing a Secret lets its node's kubelet read all of it: never the
        # agent's pods (they would put the CA key on every node)
        for doc in r.docs:
            if doc["kind"] in ("DaemonSet",) or doc["metadata"]["name"].endswith("etcd"):
                assert secret not in json.dumps(doc), doc["kind"]
    assert not rendered["default"].kinds("Secret")
    assert not rendered["existing-secrets"].kinds("Secret")
    annotations = rendered["chart-secrets"].one("StatefulSet", f"{RELEASE}-controller")["spec"][
        "template"
    ]["metadata"]["annotations"]
    assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/pki"])


# --------------------------------------------------------------------- controller


def test_controller_replicas_placement_and_security(rendered: dict[str, Rendered]) -> None:
    r = rendered["default"]
    sts = r.one("StatefulSet", f"{RELEASE}-controller")
    assert sts["spec"]["replicas"] == 2
    assert sts["spec"]["serviceName"] == f"{RELEASE}-controller-peers"
    pod = sts["spec"]["template"]["spec"]
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
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
    assert flag(args, "--metrics-listen") == "0.0.0.0:9471"
    assert "--insecure" not in args
    svc = r.one("Service", f"{RELEASE}-controller")
    assert svc["spec"]["ports"] == [
        {"name": "grpc", "port": 7480, "targetPort": "grpc", "protocol": "TCP"}
    ]
    peers = r.one("Service", f"{RELEASE}-controller-peers")
    assert peers["spec"]["clusterIP"] == "None"
    pdb = r.one("PodDisruptionBudget", f"{RELEASE}-controller")
    assert pdb["spec"]["maxUnavailable"] == 1

    small = controller_pod(rendered["small"])
    assert "initContainers" not in small
    assert "--insecure" in container(small, "controller")["args"]
    assert flag(container(small, "controller")["args"], "--listen") == "[::]:7480"
    hard = small["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert hard[0]["topologyKey"] == "kubernetes.io/hostname"


def _state_dir_script(r: Rendered) -> str:
    init = next(c for c in controller_pod(r)["initContainers"] if c["name"] == "state-dir")
    assert init["command"][:2] == ["/bin/sh", "-ec"]
    script: str = init["command"][2]
    return script


def _as_secret_volume(state: Path, volume: Path, *, without: str = "") -> None:
    """What the kubelet mounts from a Secret made of ``state`` (the chart's README
    recipe): one file per key, group-readable (fsGroup), behind ..data links."""
    data = volume / "..2025_01_01_00_00_00.000000000"
    data.mkdir(parents=True)
    files = {
        "ca.pem": "pki/ca.pem",
        "ca.key": "pki/ca.key",
        "server.pem": "pki/server.pem",
        "server.key": "pki/server.key",
        "crl.pem": "pki/crl.pem",
        "envelope.key": "envelope.key",
    }
    for key, rel in files.items():
        if key == without:
            continue
        shutil.copyfile(state / rel, data / key)
        os.chmod(data / key, 0o440)
        os.symlink(f"..data/{key}", volume / key)
    os.symlink(data.name, volume / "..data")


def test_state_dir_script_makes_a_directory_the_controller_accepts(
    rendered: dict[str, Rendered], tmp_path: Path
) -> None:
    from controller.statedir import init_state

    state = tmp_path / "init"
    init_state(state, listen=["0.0.0.0:7480"])
    secret, dest = tmp_path / "secret", tmp_path / "state"
    _as_secret_volume(state, secret)
    dest.mkdir()
    # as the volume itself: group-readable keys are refused by the controller
    with pytest.raises(CaError, match="chmod 600"):
        bad = tmp_path / "asis"
        (bad / "pki").mkdir(parents=True)
        for key in ("ca.pem", "server.pem", "server.key", "crl.pem"):
            os.symlink(secret / key, bad / "pki" / key)
        os.symlink(secret / "envelope.key", bad / "envelope.key")
        load_serving(bad)

    script = _state_dir_script(rendered["default"])
    script = script.replace("/etc/ipsecd/pki-secret", str(secret))
    script = script.replace("/var/lib/ipsecd-controller", str(dest))
    done = subprocess.run(["/bin/sh", "-ec", script], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    for rel in ("pki/server.key", "pki/ca.key", "envelope.key"):
        assert (dest / rel).stat().st_mode & 0o777 == 0o600, rel
        assert (dest / rel).read_bytes() == (state / rel).read_bytes()
    assert (dest / "pki" / "crl.pem").is_symlink()  # a new CRL in the Secret reaches it
    material = load_serving(dest)
    assert material.server_key_pem == (state / "pki" / "server.key").read_bytes()


def test_state_dir_script_names_a_missing_key(
    rendered: dict[str, Rendered], tmp_path: Path
) -> None:
    from controller.statedir import init_state

    state = tmp_path / "init"
    init_state(state, listen=["0.0.0.0:7480"])
    secret, dest = tmp_path / "secret", tmp_path / "state"
    _as_secret_volume(state, secret, without="server.key")
    dest.mkdir()
    script = _state_dir_script(rendered["existing-secrets"])
    script = script.replace("/etc/ipsecd/pki-secret", str(secret))
    script = script.replace("/var/lib/ipsecd-controller", str(dest))
    done = subprocess.run(["/bin/sh", "-ec", script], capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert "Secret my-ipsecd-pki has no key server.key" in done.stderr
    assert "charts/ipsecd/README.md" in done.stderr
    assert not (dest / "pki").exists()


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
    etcd = container(sts["spec"]["template"]["spec"], "etcd")
    cluster = flag(etcd["args"], "--initial-cluster")
    assert cluster is not None
    domain = f"{RELEASE}-etcd-headless.{NAMESPACE}.svc.cluster.local"
    assert cluster.split(",") == [
        f"{RELEASE}-etcd-{i}=http://{RELEASE}-etcd-{i}.{domain}:2380" for i in range(3)
    ]
    assert etcd["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert r.one("PodDisruptionBudget", f"{RELEASE}-etcd")["spec"]["maxUnavailable"] == 1
    assert r.one("NetworkPolicy", f"{RELEASE}-etcd")
    ctl = container(controller_pod(r), "controller")
    assert flag(ctl["args"], "--etcd") == f"http://{RELEASE}-etcd.{NAMESPACE}.svc:2379"
    assert flag(ctl["args"], "--key-root") == "/ipsecd/"

    one = rendered["small"]
    assert one.one("StatefulSet", f"{RELEASE}-etcd")["spec"]["replicas"] == 1
    assert not [p for p in one.kinds("PodDisruptionBudget") if "etcd" in p["metadata"]["name"]]
    assert not one.kinds("NetworkPolicy")


def test_external_etcd(rendered: dict[str, Rendered]) -> None:
    r = rendered["external-etcd"]
    assert not [d for d in r.docs if "etcd" in d["metadata"]["name"]]
    ctl = container(controller_pod(r), "controller")
    assert flag(ctl["args"], "--etcd") == "http://10.0.0.5:2379,http://10.0.0.6:2379"


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
