{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "lightreasoner.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, or the release name when it already holds the chart name. */}}
{{- define "lightreasoner.fullname" -}}
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

{{- define "lightreasoner.mlflowName" -}}
{{- printf "%s-mlflow" (include "lightreasoner.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lightreasoner.scheduleName" -}}
{{- printf "%s-schedule" (include "lightreasoner.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lightreasoner.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lightreasoner.labels" -}}
helm.sh/chart: {{ include "lightreasoner.chart" . }}
{{ include "lightreasoner.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lightreasoner
{{- end }}

{{- define "lightreasoner.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lightreasoner.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "lightreasoner.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "lightreasoner.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image every component runs: repository:tag, tag defaulting to the chart's appVersion. */}}
{{- define "lightreasoner.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "lightreasoner.mlflowImage" -}}
{{- if .Values.mlflow.image.repository }}
{{- printf "%s:%s" .Values.mlflow.image.repository (default .Chart.AppVersion .Values.mlflow.image.tag) }}
{{- else }}
{{- include "lightreasoner.image" . }}
{{- end }}
{{- end }}

{{/* No usage telemetry from MLflow or other libraries (clusters are often offline): env of every container. */}}
{{- define "lightreasoner.noTelemetryEnv" -}}
- name: MLFLOW_DISABLE_TELEMETRY
  value: "true"
- name: DO_NOT_TRACK
  value: "true"
{{- end }}

{{/* Namespace the Kubeflow pipeline runs in (its profile): schedule.kfp.namespace or the release's. */}}
{{- define "lightreasoner.kfpNamespace" -}}
{{- default .Release.Namespace .Values.schedule.kfp.namespace }}
{{- end }}

{{/* Host headers the MLflow server accepts: its Service names, the ingress host, local and private. */}}
{{- define "lightreasoner.mlflowAllowedHosts" -}}
{{- $svc := include "lightreasoner.mlflowName" . }}
{{- $hosts := list $svc (printf "%s:*" $svc) (printf "%s.%s" $svc .Release.Namespace) (printf "%s.%s:*" $svc .Release.Namespace) (printf "%s.%s.svc*" $svc .Release.Namespace) "localhost" "localhost:*" "127.0.0.1" "127.0.0.1:*" "10.*" "192.168.*" }}
{{- range $i := until 16 }}
{{- $hosts = append $hosts (printf "172.%d.*" (add 16 $i)) }}
{{- end }}
{{- if .Values.mlflow.ingress.enabled }}
{{- $hosts = append $hosts .Values.mlflow.ingress.host }}
{{- end }}
{{- concat $hosts .Values.mlflow.allowedHosts | join "," }}
{{- end }}

{{/* Fails unless schedule.cron is a valid 5-field cron (the schema checks its shape, this its ranges). */}}
{{- define "lightreasoner.validateCron" -}}
{{- $cron := .Values.schedule.cron | toString }}
{{- if not (regexMatch "^(\\*|[0-5]?[0-9](-[0-5]?[0-9])?)(/[0-9]{1,2})?(,(\\*|[0-5]?[0-9](-[0-5]?[0-9])?)(/[0-9]{1,2})?)* +(\\*|([01]?[0-9]|2[0-3])(-([01]?[0-9]|2[0-3]))?)(/[0-9]{1,2})?(,(\\*|([01]?[0-9]|2[0-3])(-([01]?[0-9]|2[0-3]))?)(/[0-9]{1,2})?)* +(\\*|(0?[1-9]|[12][0-9]|3[01])(-(0?[1-9]|[12][0-9]|3[01]))?)(/[0-9]{1,2})?(,(\\*|(0?[1-9]|[12][0-9]|3[01])(-(0?[1-9]|[12][0-9]|3[01]))?)(/[0-9]{1,2})?)* +(\\*|(0?[1-9]|1[0-2]|[A-Za-z]{3})(-(0?[1-9]|1[0-2]|[A-Za-z]{3}))?)(/[0-9]{1,2})?(,(\\*|(0?[1-9]|1[0-2]|[A-Za-z]{3})(-(0?[1-9]|1[0-2]|[A-Za-z]{3}))?)(/[0-9]{1,2})?)* +(\\*|([0-7]|[A-Za-z]{3})(-([0-7]|[A-Za-z]{3}))?)(/[0-9]{1,2})?(,(\\*|([0-7]|[A-Za-z]{3})(-([0-7]|[A-Za-z]{3}))?)(/[0-9]{1,2})?)*$" $cron) }}
{{- fail (printf "schedule.cron: %q is not a 5-field cron 'minute(0-59) hour(0-23) day-of-month(1-31) month(1-12) day-of-week(0-7)', e.g. '0 3 * * *'" $cron) }}
{{- end }}
{{- end }}

{{/* A pipeline parameter value as `lightreasoner pipeline schedule --param` reads it (YAML): fractional
numbers in plain decimal (YAML reads 5e-05 as a string), whole numbers without a fraction, lists and
maps (a benchmark list) as JSON. */}}
{{- define "lightreasoner.paramValue" -}}
{{- if and (kindIs "float64" .) (ne . (floor .)) }}
{{- $fixed := regexReplaceAll "0+$" (printf "%.15f" .) "" }}
{{- if hasSuffix "." $fixed }}{{ printf "%s0" $fixed }}{{ else }}{{ $fixed }}{{ end }}
{{- else if or (kindIs "slice" .) (kindIs "map" .) }}
{{- toJson . }}
{{- else }}
{{- printf "%v" . }}
{{- end }}
{{- end }}
