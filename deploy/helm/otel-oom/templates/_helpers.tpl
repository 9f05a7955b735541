{{/* Names and labels shared by every object of the chart. */}}

{{- define "otel-oom.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "otel-oom.collectorName" -}}
{{- printf "%s-collector" (include "otel-oom.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "otel-oom.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "otel-oom.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "otel-oom.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: otel-oom
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "otel-oom.agentSelectorLabels" -}}
app.kubernetes.io/name: otel-oom
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: node-agent
{{- end -}}

{{- define "otel-oom.collectorSelectorLabels" -}}
app.kubernetes.io/name: otel-collector
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: collector
{{- end -}}

{{/* Where the agent sends OTLP: otlp.endpoint, else the node-local Collector's hostPort for the
protocol (a gRPC port answers no OTLP/HTTP request, and the Collector opens 4318 on the node only
for http/protobuf). httpHostPort's default is repeated here for `helm upgrade --reuse-values` from
a release made before the value existed (which reuses the old values without the new defaults). */}}
{{- define "otel-oom.otlpEndpoint" -}}
{{- if .Values.otlp.endpoint -}}
{{- .Values.otlp.endpoint -}}
{{- else if eq .Values.otlp.protocol "http/protobuf" -}}
{{- printf "http://$(HOST_IP):%v" (.Values.collector.httpHostPort | default 4318) -}}
{{- else -}}
{{- printf "http://$(HOST_IP):%v" .Values.collector.hostPort -}}
{{- end -}}
{{- end -}}

{{/* The Collector configuration: the shipped file with collector.configOverrides merged over it. */}}
{{- define "otel-oom.collectorConfig" -}}
{{- $base := .Files.Get "files/collector.yaml" | fromYaml -}}
{{- if not $base.service -}}
{{- fail "files/collector.yaml is missing or not a Collector configuration (it links to collector-config/agent.yaml)" -}}
{{- end -}}
{{- if .Values.collector.configOverrides -}}
{{- mustMergeOverwrite $base .Values.collector.configOverrides | toYaml -}}
{{- else -}}
{{- .Files.Get "files/collector.yaml" -}}
{{- end -}}
{{- end -}}
