{{/* The release's base name, at most 63 characters (a DNS label). */}}
{{- define "napalm.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "napalm.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector of one component: (dict "ctx" $ "component" "coordinator"). */}}
{{- define "napalm.selector" -}}
app.kubernetes.io/name: {{ .ctx.Chart.Name }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The Secret holding api-token, agent-token and cluster-secret. */}}
{{- define "napalm.secretName" -}}
{{- .Values.auth.existingSecret | default (printf "%s-auth" (include "napalm.fullname" .)) -}}
{{- end -}}

{{/* An image reference: (dict "ctx" $ "image" .Values.agent.image). */}}
{{- define "napalm.image" -}}
{{- $repo := .image.repository -}}
{{- with .ctx.Values.image.registry -}}
{{- $repo = printf "%s/%s" (trimSuffix "/" .) $repo -}}
{{- end -}}
{{- printf "%s:%s" $repo (.image.tag | default .ctx.Chart.AppVersion) -}}
{{- end -}}

{{- define "napalm.coordinator.name" -}}
{{- printf "%s-coordinator" (include "napalm.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The coordinator's gRPC endpoint inside the cluster. */}}
{{- define "napalm.coordinator.endpoint" -}}
{{- printf "http://%s.%s.svc:%d" (include "napalm.coordinator.name" .) .Release.Namespace (int .Values.coordinator.service.grpcPort) -}}
{{- end -}}

{{/* The registry: etcd://a,b when etcd endpoints are given, else the embedded file. */}}
{{- define "napalm.coordinator.store" -}}
{{- if .Values.coordinator.store.etcd.endpoints -}}
{{- printf "etcd://%s" (join "," .Values.coordinator.store.etcd.endpoints) -}}
{{- else -}}
/var/lib/napalm/registry.redb
{{- end -}}
{{- end -}}

{{/* The Secret holding the cluster CA (tls.crt, tls.key): the coordinator's only. */}}
{{- define "napalm.trust.caSecret" -}}
{{- printf "%s-ca" (include "napalm.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The Secret holding the agents' bootstrap join token (join-token). */}}
{{- define "napalm.trust.joinSecret" -}}
{{- .Values.trust.existingJoinTokenSecret | default (printf "%s-join" (include "napalm.fullname" .) | trunc 63 | trimSuffix "-") -}}
{{- end -}}

{{/* host:port of the coordinator's TLS listener (enrollment, mutual-TLS API) in the cluster. */}}
{{- define "napalm.coordinator.tlsAddress" -}}
{{- printf "%s.%s.svc:%d" (include "napalm.coordinator.name" .) .Release.Namespace (int .Values.coordinator.service.tlsPort) -}}
{{- end -}}

{{/* Whether the agents enroll with the bootstrap join token (neither plain nor given TLS files). */}}
{{- define "napalm.agent.joins" -}}
{{- if and (not .Values.agent.insecurePlain) (not .Values.agent.tls.secretName) -}}true{{- end -}}
{{- end -}}
