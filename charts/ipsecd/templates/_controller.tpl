{{/*
A controller StatefulSet; call with (dict "ctx" $ "signer" BOOL).

The replicas (signer false): "<fullname>-controller", controller.replicas pods without
the CA key and without a join port.  The signer (signer true): "<fullname>-signer", one
pod holding the CA key, opening the join port, with its CA index on a
PersistentVolumeClaim (values.yaml controller.signer).  Both are StatefulSets for one
reason: each replica advertises a stable name (POD.<peers>.<namespace>.svc.<domain>)
that the serving certificate covers with one wildcard, so a replica can forward a live
status query to the replica holding a node's stream over mTLS (docs/architecture.md
"Status").  Both carry the component label "controller" (the Services, the PDB, the
metrics and etcd's NetworkPolicy select them together) and are told apart by
ipsecd.io/signer.
*/}}
{{- define "ipsecd.controller.statefulset" -}}
{{- $ := .ctx }}
{{- $signer := .signer }}
{{- $c := $.Values.controller }}
{{- $paths := include "ipsecd.controller.paths" $ | fromYaml }}
{{- $name := ternary (include "ipsecd.signer.fullname" $) (include "ipsecd.controller.fullname" $) $signer }}
{{- $peers := include "ipsecd.controller.peers" $ }}
{{- $secure := not $.Values.insecure }}
{{- $etcdTls := not $.Values.etcd.plaintext }}
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: {{ $name }}
  namespace: {{ $.Release.Namespace }}
  labels:
    {{- include "ipsecd.labels" (dict "ctx" $ "component" "controller") | nindent 4 }}
    ipsecd.io/signer: {{ $signer | quote }}
spec:
  {{- if $signer }}
  # exactly one: the CA's index is this pod's own file (values.yaml controller.signer)
  replicas: 1
  {{- else }}
  replicas: {{ $c.replicas }}
  {{- end }}
  serviceName: {{ $peers }}
  podManagementPolicy: Parallel
  updateStrategy:
    type: RollingUpdate
  selector:
    matchLabels:
      {{- include "ipsecd.selectorLabels" (dict "ctx" $ "component" "controller") | nindent 6 }}
      ipsecd.io/signer: {{ $signer | quote }}
  template:
    metadata:
      labels:
        {{- include "ipsecd.selectorLabels" (dict "ctx" $ "component" "controller") | nindent 8 }}
        ipsecd.io/signer: {{ $signer | quote }}
        {{- with $c.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- if or $.Values.pki.create $c.podAnnotations }}
      annotations:
        {{- if $.Values.pki.create }}
        checksum/pki: {{ include (print $.Template.BasePath "/secrets.yaml") $ | sha256sum }}
        {{- end }}
        {{- with $c.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- end }}
    spec:
      serviceAccountName: {{ include "ipsecd.serviceAccountName" (dict "ctx" $ "component" "controller") }}
      # the controller never calls the Kubernetes API
      automountServiceAccountToken: false
      {{- with $.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $c.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      terminationGracePeriodSeconds: {{ $c.terminationGracePeriodSeconds }}
      securityContext:
        runAsNonRoot: true
        runAsUser: {{ $c.runAsUser }}
        runAsGroup: {{ $c.runAsUser }}
        # makes the Secrets' files group-readable for the copy below
        fsGroup: {{ $c.runAsUser }}
        {{- if $signer }}
        fsGroupChangePolicy: OnRootMismatch
        {{- end }}
        seccompProfile:
          type: RuntimeDefault
      {{- if or $secure $etcdTls }}
      initContainers:
        # keys 0600 into the memory-backed state directory: see "ipsecd.controller.stateScript"
        - name: state-dir
          image: {{ include "ipsecd.image" $ }}
          imagePullPolicy: {{ $.Values.image.pullPolicy }}
          command:
            - /bin/sh
            - -ec
            - |
              {{- include "ipsecd.controller.stateScript" (dict "ctx" $ "signer" $signer) | trim | nindent 14 }}
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities:
              drop: ["ALL"]
          resources:
            requests:
              cpu: 10m
              memory: 16Mi
            limits:
              memory: 64Mi
          volumeMounts:
            - name: state
              mountPath: {{ $paths.state }}
            {{- include "ipsecd.controller.secretMounts" (dict "ctx" $ "signer" $signer) | trim | nindent 12 }}
      {{- end }}
      containers:
        - name: controller
          image: {{ include "ipsecd.image" $ }}
          imagePullPolicy: {{ $.Values.image.pullPolicy }}
          command: ["ipsecd-controller"]
          args:
            - --listen={{ include "ipsecd.hostport" (dict "host" $c.listenHost "port" $c.port) }}
            - --advertise=$(POD_NAME).{{ $peers }}.{{ $.Release.Namespace }}.svc.{{ $.Values.clusterDomain }}:{{ $c.port }}
            - --replica-id=$(POD_NAME)
            - --etcd={{ include "ipsecd.etcd.endpoints" $ }}
            {{- if $etcdTls }}
            - --etcd-cacert={{ $paths.state }}/etcd-client/ca.pem
            - --etcd-cert={{ $paths.state }}/etcd-client/client.pem
            - --etcd-key={{ $paths.state }}/etcd-client/client.key
            {{- with $.Values.etcd.external.serverName }}
            - --etcd-server-name={{ . }}
            {{- end }}
            {{- else }}
            # plaintext etcd, warned at every start (values.yaml etcd.plaintext)
            - --etcd-plaintext
            {{- end }}
            - --key-root={{ $.Values.etcd.keyRoot }}
            - --state-dir={{ $paths.state }}
            - --lease-ttl={{ $c.leaseTTL }}
            - --ping-interval={{ $c.pingInterval }}
            - --max-policy-bytes={{ int64 $c.maxPolicyBytes }}
            {{- if $secure }}
            - --envelope-key={{ $paths.state }}/envelope.key
            {{- if $signer }}
            - --join-listen={{ include "ipsecd.hostport" (dict "host" $c.listenHost "port" (include "ipsecd.controller.joinPort" $)) }}
            {{- else }}
            # no CA key here: no joins (the signer takes them)
            - --join-listen=none
            {{- end }}
            {{- end }}
            {{- if $.Values.metrics.enabled }}
            - --metrics-listen={{ include "ipsecd.hostport" (dict "host" $.Values.metrics.listenHost "port" $.Values.metrics.controllerPort) }}
            {{- end }}
            {{- if $.Values.insecure }}
            - --insecure
            {{- end }}
            - -m
            - {{ $c.messageLevel }}
            - --log-format={{ $.Values.logFormat }}
            {{- range $c.extraArgs }}
            - {{ . | quote }}
            {{- end }}
          env:
            - name: POD_NAME
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
          ports:
            - name: grpc
              containerPort: {{ $c.port }}
              protocol: TCP
            {{- if $signer }}
            - name: join
              containerPort: {{ include "ipsecd.controller.joinPort" $ }}
              protocol: TCP
            {{- end }}
            {{- if $.Values.metrics.enabled }}
            - name: metrics
              containerPort: {{ $.Values.metrics.controllerPort }}
              protocol: TCP
            {{- end }}
          # the gRPC port opens once etcd answered (controller/main.py: the store
          # connects first)
          startupProbe:
            tcpSocket:
              port: grpc
            periodSeconds: 5
            failureThreshold: 60
          readinessProbe:
            tcpSocket:
              port: grpc
            periodSeconds: 10
          livenessProbe:
            tcpSocket:
              port: grpc
            periodSeconds: 20
            failureThreshold: 3
          resources:
            {{- toYaml $c.resources | nindent 12 }}
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities:
              drop: ["ALL"]
          volumeMounts:
            - name: state
              mountPath: {{ $paths.state }}
            - name: tmp
              mountPath: /tmp
            {{- include "ipsecd.controller.secretMounts" (dict "ctx" $ "signer" $signer) | trim | nindent 12 }}
      volumes:
        # keys in memory only, never on the node's disk
        - name: state
          emptyDir:
            medium: Memory
            sizeLimit: 16Mi
        - name: tmp
          emptyDir:
            sizeLimit: 64Mi
        {{- if $secure }}
        - name: pki
          secret:
            secretName: {{ include "ipsecd.pki.secretName" $ }}
            defaultMode: 0440
        {{- if $signer }}
        # the CA key: named by the signer's pod alone
        - name: ca
          secret:
            secretName: {{ include "ipsecd.ca.secretName" $ }}
            defaultMode: 0440
        {{- end }}
        {{- end }}
        {{- if $etcdTls }}
        - name: etcd-client
          secret:
            secretName: {{ include "ipsecd.etcd.clientSecretName" $ }}
            defaultMode: 0440
        {{- end }}
      {{- if $c.affinity }}
      affinity:
        {{- toYaml $c.affinity | nindent 8 }}
      {{- else }}
      # apart from every controller pod, the signer's included
      affinity:
        podAntiAffinity:
          {{- if eq $c.podAntiAffinity "hard" }}
          requiredDuringSchedulingIgnoredDuringExecution:
            - topologyKey: kubernetes.io/hostname
              labelSelector:
                matchLabels:
                  {{- include "ipsecd.selectorLabels" (dict "ctx" $ "component" "controller") | nindent 18 }}
          {{- else }}
          preferredDuringSchedulingIgnoredDuringExecution:
            - weight: 100
              podAffinityTerm:
                topologyKey: kubernetes.io/hostname
                labelSelector:
                  matchLabels:
                    {{- include "ipsecd.selectorLabels" (dict "ctx" $ "component" "controller") | nindent 20 }}
          {{- end }}
      {{- end }}
      {{- with $c.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $c.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
  {{- if $signer }}
  # the CA's index (pki/certs.json) and CRL; no key on it (README.md "Credentials")
  volumeClaimTemplates:
    - apiVersion: v1
      kind: PersistentVolumeClaim
      metadata:
        name: ca-state
        labels:
          {{- include "ipsecd.selectorLabels" (dict "ctx" $ "component" "controller") | nindent 10 }}
          ipsecd.io/signer: "true"
      spec:
        accessModes: ["ReadWriteOnce"]
        {{- with $c.signer.storage.storageClassName }}
        storageClassName: {{ . }}
        {{- end }}
        resources:
          requests:
            storage: {{ $c.signer.storage.size }}
  {{- end }}
{{- end }}

{{/* The Secret volumes of a controller container; (dict "ctx" $ "signer" BOOL). */}}
{{- define "ipsecd.controller.secretMounts" -}}
{{- $ := .ctx }}
{{- $paths := include "ipsecd.controller.paths" $ | fromYaml }}
{{- if not $.Values.insecure }}
- name: pki
  mountPath: {{ $paths.pkiSecret }}
  readOnly: true
{{- if .signer }}
- name: ca
  mountPath: {{ $paths.caSecret }}
  readOnly: true
- name: ca-state
  mountPath: {{ $paths.caVolume }}
{{- end }}
{{- end }}
{{- if not $.Values.etcd.plaintext }}
- name: etcd-client
  mountPath: {{ $paths.etcdSecret }}
  readOnly: true
{{- end }}
{{- end }}
