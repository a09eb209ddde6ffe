{{/* The app name: the chart's, unless nameOverride. */}}
{{- define "tollgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Object names: the release name when it contains the app name ("tollgate"), else release-app. */}}
{{- define "tollgate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "tollgate.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The labels the kustomize manifests put on every object and pod. */}}
{{- define "tollgate.appLabels" -}}
app.kubernetes.io/name: {{ include "tollgate.name" . }}
app.kubernetes.io/part-of: tollgate
{{- end -}}

{{/* Object labels: the app labels, and Helm's release bookkeeping (the one
deliberate difference from deploy/install.yaml; pods do not carry it). */}}
{{- define "tollgate.labels" -}}
{{ include "tollgate.appLabels" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* repository:tag of an image value, the tag defaulting to appVersion. */}}
{{- define "tollgate.image" -}}
{{- printf "%s:%s" .image.repository (default .chart.AppVersion .image.tag) -}}
{{- end -}}

{{/* The decider's socket, shared with the queuer through an emptyDir. */}}
{{- define "tollgate.socket" -}}
/run/tollgate/decider.sock
{{- end -}}
