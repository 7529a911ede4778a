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

{{/* The --etcd value of the controller: the bundled cluster's client Service, or the
external endpoints. */}}
{{- define "ipsecd.etcd.endpoints" -}}
{{- if eq .Values.etcd.mode "bundled" }}
{{- printf "http://%s.%s.svc:%d" (include "ipsecd.etcd.fullname" .) .Release.Namespace (int .Values.etcd.bundled.clientPort) }}
{{- else }}
{{- join "," .Values.etcd.external.endpoints }}
{{- end }}
{{- end }}

{{- define "ipsecd.pki.secretName" -}}
{{- default (printf "%s-pki" (include "ipsecd.fullname" .)) .Values.pki.existingSecret }}
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
{{- if $v.pki.create }}
{{- range $key := list "caCert" "serverCert" "serverKey" "crl" "envelopeKeyBase64" }}
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
{{- fail "etcd.mode is external but etcd.external.endpoints is empty: list the client URLs, e.g. --set etcd.external.endpoints={http://10.0.0.5:2379}" }}
{{- end }}
{{- if and (eq $v.etcd.mode "bundled") $v.etcd.external.endpoints }}
{{- fail "etcd.external.endpoints is set but etcd.mode is bundled: set etcd.mode=external to use them, or drop them" }}
{{- end }}
{{- if and $v.metrics.serviceMonitor.enabled (not $v.metrics.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled: true (the daemons serve no metrics port otherwise)" }}
{{- end }}
{{- end }}
