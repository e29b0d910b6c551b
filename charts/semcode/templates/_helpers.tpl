{{/* Names ------------------------------------------------------------------------------------------ */}}

{{- define "semcode.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's base name; objects are named <fullname>-<part>, so it stays well under 63 characters. */}}
{{- define "semcode.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "semcode.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels: the standard app.kubernetes.io set. */}}
{{- define "semcode.selectorLabels" -}}
app.kubernetes.io/name: {{ include "semcode.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "semcode.labels" -}}
helm.sh/chart: {{ include "semcode.chart" . }}
{{ include "semcode.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: semcode
{{- end }}

{{/* Images: <registry>/semcode-cpu:<tag>, as src/semcode/components/images.py and images/build.sh name them. */}}
{{- define "semcode.registry" -}}
{{- required "image.registry is required" .Values.image.registry | trimSuffix "/" }}
{{- end }}

{{- define "semcode.tag" -}}
{{- .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "semcode.cpuImage" -}}
{{- printf "%s/semcode-cpu:%s" (include "semcode.registry" .) (include "semcode.tag" .) }}
{{- end }}

{{/* The runner ServiceAccount. */}}
{{- define "semcode.runnerServiceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (printf "%s-runner" (include "semcode.fullname" .)) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* S3 ---------------------------------------------------------------------------------------------- */}}

{{- define "semcode.s3SecretName" -}}
{{- required "s3.existingSecret: the name of the S3 credentials Secret is required" .Values.s3.existingSecret }}
{{- end }}

{{/* The model registry: where the gate publishes and the search service reads; s3://<bucket>/registry by default. */}}
{{- define "semcode.registryUri" -}}
{{- if .Values.model.registry }}
{{- .Values.model.registry | trimSuffix "/" }}
{{- else }}
{{- printf "s3://%s/registry" (required "s3.bucket (or model.registry) is required: where the model registry lives" .Values.s3.bucket) }}
{{- end }}
{{- end }}

{{/* The index registry the re-indexing CronJob publishes to; s3://<bucket>/indexes by default. */}}
{{- define "semcode.indexRegistryUri" -}}
{{- if .Values.reindex.registry }}
{{- .Values.reindex.registry | trimSuffix "/" }}
{{- else }}
{{- printf "s3://%s/indexes" (required "s3.bucket (or reindex.registry) is required: where the index registry lives" .Values.s3.bucket) }}
{{- end }}
{{- end }}

{{- define "semcode.bundle" -}}
{{- .Values.serve.bundle | default (printf "%s/%s/latest" (include "semcode.registryUri" .) (required "model.name is required" .Values.model.name)) }}
{{- end }}

{{/*
The S3 environment of a container: credentials from the Secret (never a literal value), the endpoint and
region from values when set, else from the Secret's optional keys.
*/}}
{{- define "semcode.s3Env" -}}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ include "semcode.s3SecretName" . }}
      key: AWS_ACCESS_KEY_ID
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "semcode.s3SecretName" . }}
      key: AWS_SECRET_ACCESS_KEY
{{- range $name, $value := dict "AWS_ENDPOINT_URL" .Values.s3.endpoint "AWS_DEFAULT_REGION" .Values.s3.region }}
- name: {{ $name }}
{{- if $value }}
  value: {{ $value | quote }}
{{- else }}
  valueFrom:
    secretKeyRef:
      name: {{ include "semcode.s3SecretName" $ }}
      key: {{ $name }}
      optional: true
{{- end }}
{{- end }}
{{- end }}
