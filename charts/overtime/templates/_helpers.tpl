{{/*
Chart name, truncated to the 63 characters a label value may hold.
*/}}
{{- define "overtime.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart>, or the release name when it already holds the
chart name.
*/}}
{{- define "overtime.fullname" -}}
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

{{- define "overtime.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels that select the agent pods. Never change them in an upgrade: a
DaemonSet's selector is immutable.
*/}}
{{- define "overtime.selectorLabels" -}}
app.kubernetes.io/name: {{ include "overtime.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Standard labels on every resource.
*/}}
{{- define "overtime.labels" -}}
helm.sh/chart: {{ include "overtime.chart" . }}
{{ include "overtime.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: node-agent
app.kubernetes.io/part-of: overtime
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "overtime.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "overtime.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "overtime.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
The agent's config file (contract "Config file"). `listen` is left out: the
container sets it with --listen. Rule names must be unique; the schema
cannot say so, so the template does.
*/}}
{{- define "overtime.config" -}}
{{- $seen := dict }}
{{- range .Values.config.rules }}
{{- if hasKey $seen .name }}
{{- fail (printf "config.rules: rule name %q is used more than once" .name) }}
{{- end }}
{{- $_ := set $seen .name true }}
{{- end }}
{{- $cfg := dict "mode" .Values.config.mode "rules" .Values.config.rules }}
{{- with .Values.config.limits }}
{{- $_ := set $cfg "limits" . }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/*
Alert annotation fragments (Prometheus alert templates, emitted verbatim).
The node is the `node` label the ServiceMonitor adds; without it, the
scrape `instance`.
*/}}
{{- define "overtime.alertNode" -}}
{{`{{ if $labels.node }}{{ $labels.node }}{{ else }}{{ $labels.instance }}{{ end }}`}}
{{- end }}

{{/*
PromQL for "a counter went up in the window": increase() > 0, or a series
that appeared within the window already above zero (increase() needs two
samples, so a counter first exported at 1 would be missed).
Args: list of selector, window, by-labels.
*/}}
{{- define "overtime.counterIncreased" -}}
{{- $sel := index . 0 }}{{ $win := index . 1 }}{{ $by := index . 2 -}}
sum by ({{ $by }}) (
  increase({{ $sel }}[{{ $win }}]) > 0
    or
  ({{ $sel }} > 0 unless {{ $sel }} offset {{ $win }})
) > 0
{{- end }}
