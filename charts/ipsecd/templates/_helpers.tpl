{{/*
Names, labels and the values every template shares.  Semantic checks that the JSON
schema cannot express live in "ipsecd.validate" and fail the render with a message
naming the value and the fix.
*/}}

{{- define "ipsecd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ipsecd.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "ipsecd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels; call with (dict "ctx" $ "component" "controller"). */}}
{{- define "ipsecd.labels" -}}
helm.sh/chart: {{ include "ipsecd.chart" .ctx }}
{{ include "ipsecd.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: ipsecd
{{- end }}

{{- define "ipsecd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ipsecd.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "ipsecd.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "ipsecd.etcdImage" -}}
{{- $img := .Values.etcd.bundled.image }}
{{- if $img.repository }}
{{- printf "%s:%s" $img.repository (required "etcd.bundled.image.tag: set the tag of etcd.bundled.image.repository" $img.tag) }}
{{- else }}
{{- include "ipsecd.image" . }}
{{- end }}
{{- end }}

{{/* Controller names: the StatefulSet, its client Service, its headless peer Service. */}}
{{- define "ipsecd.controller.fullname" -}}
{{- printf "%s-controller" (include "ipsecd.fullname" .) | trunc 52 | trimSuffix "-" }}
{{- end }}

{{- define "ipsecd.controller.peers" -}}
{{- printf "%s-peers" (include "ipsecd.controller.fullname" .) }}
{{- end }}

{{/* The signer: the one controller replica holding the CA key (values.yaml
controller.signer). */}}
{{- define "ipsecd.signer.fullname" -}}
{{- printf "%s-signer" (include "ipsecd.fullname" .) | trunc 52 | trimSuffix "-" }}
{{- end }}

{{/* The join port: controller.joinPort, or the API port + 1 (the daemons' default). */}}
{{- define "ipsecd.controller.joinPort" -}}
{{- if .Values.controller.joinPort }}
{{- .Values.controller.joinPort | int }}
{{- else }}
{{- add (int .Values.controller.port) 1 }}
{{- end }}
{{- end }}

{{/* The address agents dial: the client Service, by its cluster DNS name. */}}
{{- define "ipsecd.controller.address" -}}
{{- printf "%s.%s.svc:%d" (include "ipsecd.controller.fullname" .) .Release.Namespace (int .Values.controller.port) }}
{{- end }}

{{- define "ipsecd.agent.fullname" -}}
{{- printf "%s-agent" (include "ipsecd.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ipsecd.etcd.fullname" -}}
{{- printf "%s-etcd" (include "ipsecd.fullname" .) | trunc 52 | trimSuffix "-" }}
{{- end }}

{{- define "ipsecd.etcd.headless" -}}
{{- printf "%s-headless" (include "ipsecd.etcd.fullname" .) }}
{{- end }}

{{/* The scheme of etcd's URLs: https unless etcd.plaintext. */}}
{{- define "ipsecd.etcd.scheme" -}}
{{- ternary "http" "https" .Values.etcd.plaintext }}
{{- end }}

{{/* The --etcd value of the controller: the bundled cluster's client Service, or the
external endpoints. */}}
{{- define "ipsecd.etcd.endpoints" -}}
{{- if eq .Values.etcd.mode "bundled" }}
{{- printf "%s://%s.%s.svc:%d" (include "ipsecd.etcd.scheme" .) (include "ipsecd.etcd.fullname" .) .Release.Namespace (int .Values.etcd.bundled.clientPort) }}
{{- else }}
{{- join "," .Values.etcd.external.endpoints }}
{{- end }}
{{- end }}

{{- define "ipsecd.etcd.clientSecretName" -}}
{{- default (printf "%s-etcd-client" (include "ipsecd.fullname" .)) .Values.etcd.clientSecret }}
{{- end }}

{{- define "ipsecd.etcd.serverSecretName" -}}
{{- default (printf "%s-etcd-server" (include "ipsecd.fullname" .)) .Values.etcd.bundled.serverSecret }}
{{- end }}

{{- define "ipsecd.pki.secretName" -}}
{{- default (printf "%s-pki" (include "ipsecd.fullname" .)) .Values.pki.existingSecret }}
{{- end }}

{{- define "ipsecd.ca.secretName" -}}
{{- default (printf "%s-ca" (include "ipsecd.fullname" .)) .Values.pki.caExistingSecret }}
{{- end }}

{{- define "ipsecd.joinToken.secretName" -}}
{{- default (printf "%s-join-token" (include "ipsecd.fullname" .)) .Values.joinToken.existingSecret }}
{{- end }}

{{- define "ipsecd.serviceAccountName" -}}
{{- printf "%s-%s" (include "ipsecd.fullname" .ctx) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* host:port for --listen / --metrics-listen; IPv6 hosts in brackets. */}}
{{- define "ipsecd.hostport" -}}
{{- if contains ":" .host }}
{{- printf "[%s]:%d" .host (int .port) }}
{{- else }}
{{- printf "%s:%d" .host (int .port) }}
{{- end }}
{{- end }}

{{/*
Checks across values (the schema checks each value on its own).  Every message names
the value and the fix.
*/}}
{{- define "ipsecd.validate" -}}
{{- $v := .Values }}
{{- if and $v.pki.create $v.pki.existingSecret }}
{{- fail "pki.create and pki.existingSecret exclude each other: either the chart makes the Secret from pki.caCert/... or it uses yours" }}
{{- end }}
{{- if and $v.pki.create $v.pki.caExistingSecret }}
{{- fail "pki.create and pki.caExistingSecret exclude each other: either the chart makes the CA Secret from pki.caKey and pki.caRecords or it uses yours" }}
{{- end }}
{{- if $v.pki.create }}
{{- range $key := list "caCert" "caKey" "caRecords" "serverCert" "serverKey" "crl" "envelopeKeyBase64" }}
{{- if not (get $v.pki $key) }}
{{- fail (printf "pki.create is true but pki.%s is empty: pass the file made by `ipsecd-controller init` with --set-file pki.%s=PATH (charts/ipsecd/README.md)" $key $key) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and $v.joinToken.create $v.joinToken.existingSecret }}
{{- fail "joinToken.create and joinToken.existingSecret exclude each other" }}
{{- end }}
{{- if and $v.joinToken.create (not $v.joinToken.value) }}
{{- fail "joinToken.create is true but joinToken.value is empty: pass it with --set-file joinToken.value=PATH (never on the command line), or create the Secret yourself and set joinToken.existingSecret" }}
{{- end }}
{{- if and (eq $v.etcd.mode "external") (not $v.etcd.external.endpoints) }}
{{- fail "etcd.mode is external but etcd.external.endpoints is empty: list the client URLs, e.g. --set etcd.external.endpoints={https://10.0.0.5:2379}" }}
{{- end }}
{{- if and $v.etcd.external.serverName (eq $v.etcd.mode "bundled") }}
{{- fail "etcd.external.serverName is set but etcd.mode is bundled: the bundled members' certificates carry the client Service's name; drop it or set etcd.mode=external" }}
{{- end }}
{{- if and $v.etcd.external.serverName $v.etcd.plaintext }}
{{- fail "etcd.external.serverName needs TLS: drop it or etcd.plaintext" }}
{{- end }}
{{- if and $v.insecure (lt (int $v.controller.replicas) 1) }}
{{- fail "insecure=true runs no signer (there is no CA): controller.replicas must be at least 1" }}
{{- end }}
{{- $join := include "ipsecd.controller.joinPort" . | int }}
{{- if or (eq $join (int $v.controller.port)) (gt $join 65535) }}
{{- fail (printf "controller.joinPort: %d is the API port or no port: choose another (0: controller.port + 1)" $join) }}
{{- end }}
{{- if and (eq $v.etcd.mode "bundled") $v.etcd.external.endpoints }}
{{- fail "etcd.external.endpoints is set but etcd.mode is bundled: set etcd.mode=external to use them, or drop them" }}
{{- end }}
{{- range $url := $v.etcd.external.endpoints }}
{{- if and $v.etcd.plaintext (hasPrefix "https://" $url) }}
{{- fail (printf "etcd.external.endpoints: %s is https:// but etcd.plaintext is true: drop etcd.plaintext (the controller then uses etcd.clientSecret's certificates)" $url) }}
{{- end }}
{{- if and (not $v.etcd.plaintext) (hasPrefix "http://" $url) }}
{{- fail (printf "etcd.external.endpoints: %s is plaintext http://: give https:// endpoints (and etcd.clientSecret with ca.pem client.pem client.key), or accept plaintext etcd with etcd.plaintext=true (the controller warns at every start; docs/security.md \"The etcd link\")" $url) }}
{{- end }}
{{- end }}
{{- if and $v.metrics.serviceMonitor.enabled (not $v.metrics.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled: true (the daemons serve no metrics port otherwise)" }}
{{- end }}
{{- end }}

{{/*
Paths inside the controller's pods (one place: the templates and the state-dir script
use them; tests/unit/test_chart.py runs the script against these paths moved into a
temporary directory).
*/}}
{{- define "ipsecd.controller.paths" -}}
state: /var/lib/ipsecd-controller
pkiSecret: /etc/ipsecd/pki-secret
caSecret: /etc/ipsecd/ca-secret
etcdSecret: /etc/ipsecd/etcd-secret
caVolume: /var/lib/ipsecd-ca
{{- end }}

{{/*
The init container's script of a controller pod; call with (dict "ctx" $ "signer" BOOL).

The controller refuses key files that group or others may read (docs/operations.md
"Controller"), and Kubernetes makes a Secret's files group-readable once fsGroup is
set; so the keys are copied 0600 into the memory-backed state directory, owned by the
controller's user.  Every replica: the serving certificate and key, the envelope key
(docs/security.md "Secrets"), the etcd client credentials.  crl.pem of a replica stays a
link into the Secret; the cluster's newer CRLs reach it through etcd.

The signer also gets the CA key (from its own Secret, which no other pod names) and
keeps pki/ on its PersistentVolumeClaim: certs.json (the CA's index) and crl.pem must
outlive the pod, while the keys stay in memory: pki/ca.key and pki/server.key on the
volume are links to the copies in the memory directory.  certs.json and crl.pem come
from the Secrets at the first start only; from then on the volume's are the truth.
*/}}
{{- define "ipsecd.controller.stateScript" -}}
{{- $ctx := .ctx }}
{{- $paths := include "ipsecd.controller.paths" $ctx | fromYaml }}
{{- $pki := include "ipsecd.pki.secretName" $ctx }}
{{- $ca := include "ipsecd.ca.secretName" $ctx }}
dst={{ $paths.state }}
fail() { echo "error: $*" >&2; exit 1; }
umask 077
{{- if not $ctx.Values.insecure }}
src={{ $paths.pkiSecret }}
for f in ca.pem server.pem server.key crl.pem envelope.key; do
  [ -s "$src/$f" ] || fail "Secret {{ $pki }} has no key $f: make it from the state directory of 'ipsecd-controller init' (charts/ipsecd/README.md \"Credentials\")"
done
if [ -e "$src/ca.key" ]; then
  fail "Secret {{ $pki }} holds ca.key: every controller replica's node could read the CA key; keep it only in Secret {{ $ca }} (the signer's) and make {{ $pki }} again without it (charts/ipsecd/README.md \"Credentials\")"
fi
{{- if .signer }}
csrc={{ $paths.caSecret }} vol={{ $paths.caVolume }}
[ -s "$csrc/ca.key" ] || fail "Secret {{ $ca }} has no key ca.key: the signer needs the cluster CA's key (state/pki/ca.key of 'ipsecd-controller init'; charts/ipsecd/README.md \"Credentials\")"
if [ ! -e "$vol/pki/certs.json" ] && [ ! -s "$csrc/certs.json" ]; then
  fail "Secret {{ $ca }} has no key certs.json: the signer's first start takes the CA's index (state/pki/certs.json of 'ipsecd-controller init') so that revocations and CRL numbers continue it (charts/ipsecd/README.md \"Credentials\")"
fi
{{- end }}
{{- end }}
{{- if not $ctx.Values.etcd.plaintext }}
esrc={{ $paths.etcdSecret }}
for f in ca.pem client.pem client.key; do
  [ -s "$esrc/$f" ] || fail "Secret {{ include "ipsecd.etcd.clientSecretName" $ctx }} has no key $f: the controller's etcd client credentials (charts/ipsecd/README.md \"etcd\")"
done
{{- end }}
{{- if not $ctx.Values.insecure }}
install -m 0600 "$src/envelope.key" "$dst/envelope.key"
{{- end }}
{{- if not $ctx.Values.etcd.plaintext }}
install -d -m 0700 "$dst/etcd-client"
install -m 0600 "$esrc/client.key" "$dst/etcd-client/client.key"
install -m 0644 "$esrc/ca.pem" "$esrc/client.pem" "$dst/etcd-client/"
{{- end }}
{{- if $ctx.Values.insecure }}
{{- else if .signer }}
install -d -m 0700 "$dst/keys" "$vol/pki"
install -m 0600 "$csrc/ca.key" "$dst/keys/ca.key"
install -m 0600 "$src/server.key" "$dst/keys/server.key"
ln -sfn "$dst/keys/ca.key" "$vol/pki/ca.key"
ln -sfn "$dst/keys/server.key" "$vol/pki/server.key"
install -m 0644 "$src/ca.pem" "$src/server.pem" "$vol/pki/"
if [ ! -e "$vol/pki/certs.json" ]; then
  install -m 0644 "$src/crl.pem" "$vol/pki/crl.pem"
  install -m 0600 "$csrc/certs.json" "$vol/pki/certs.json"
fi
ln -sfn "$vol/pki" "$dst/pki"
{{- else }}
install -d -m 0700 "$dst/pki"
install -m 0600 "$src/server.key" "$dst/pki/server.key"
install -m 0644 "$src/ca.pem" "$src/server.pem" "$dst/pki/"
ln -sf "$src/crl.pem" "$dst/pki/crl.pem"
{{- end }}
{{- end }}
