{{/* Names, labels, and the checks that refuse unsafe values. */}}

{{- define "openfusion.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: the release name alone when it already contains the chart's name. */}}
{{- define "openfusion.fullname" -}}
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

{{- define "openfusion.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "openfusion.selectorLabels" -}}
app.kubernetes.io/name: {{ include "openfusion.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "openfusion.labels" -}}
helm.sh/chart: {{ include "openfusion.chart" . }}
{{ include "openfusion.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "openfusion.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "openfusion.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "openfusion.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "openfusion.devSecretName" -}}
{{- printf "%s-dev" (include "openfusion.fullname" .) }}
{{- end }}

{{/* Whether the chart-made trial Secret holds this variable. */}}
{{- define "openfusion.devSecretHas" -}}
{{- $ := index . 0 }}
{{- if and $.Values.devSecret.create (hasKey $.Values.devSecret.stringData (index . 1)) }}true{{ end }}
{{- end }}

{{/* "true" when the pods get DATABASE_URL (PostgreSQL), so several replicas share one activity store. */}}
{{- define "openfusion.hasDatabase" -}}
{{- if or .Values.database.existingSecret .Values.database.url (include "openfusion.devSecretHas" (list . "DATABASE_URL")) }}true{{ end }}
{{- end }}

{{/* "true" when client keys are configured: OPENFUSION_API_KEYS from a Secret, or [[keys]] in the config. */}}
{{- define "openfusion.hasClientKeys" -}}
{{- $fromSecret := and .Values.clientKeys.existingSecret (or .Values.clientKeys.apiKeysKey .Values.clientKeys.keyEnv) }}
{{- $fromConfig := regexMatch "(?m)^\\s*\\[\\[\\s*keys\\s*\\]\\]" .Values.config }}
{{- if or $fromSecret $fromConfig (include "openfusion.devSecretHas" (list . "OPENFUSION_API_KEYS")) }}true{{ end }}
{{- end }}

{{/* The hard limit: the configured one, else preStop sleep + openfusion's grace + 10 s of margin. */}}
{{- define "openfusion.terminationGracePeriodSeconds" -}}
{{- $floor := add (int .Values.preStopSleepSeconds) (int (ceil .Values.shutdownGraceSeconds)) }}
{{- if kindIs "string" .Values.terminationGracePeriodSeconds }}
{{- if .Values.terminationGracePeriodSeconds }}{{ int .Values.terminationGracePeriodSeconds }}{{ else }}{{ add $floor 10 }}{{ end }}
{{- else }}
{{- int .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* Refuse values that would deploy something broken or unsafe; called by the Deployment. */}}
{{- define "openfusion.validate" -}}
{{- $hasDatabase := include "openfusion.hasDatabase" . }}
{{- if and (gt (int .Values.replicaCount) 1) (not $hasDatabase) }}
{{- fail (printf "replicaCount is %d but no DATABASE_URL is configured: each pod would keep its own SQLite activity store (history, spend caps and limits split per pod). Set database.existingSecret (a Secret with DATABASE_URL=postgresql://...) or database.url, or use replicaCount 1." (int .Values.replicaCount)) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (not $hasDatabase) }}
{{- fail "autoscaling.enabled needs DATABASE_URL: several pods on SQLite would each keep their own activity store (history, spend caps split per pod). Set database.existingSecret (a Secret with DATABASE_URL=postgresql://...) or database.url." }}
{{- end }}
{{- $exposed := list }}
{{- if .Values.ingress.enabled }}{{ $exposed = append $exposed "ingress.enabled" }}{{ end }}
{{- if has .Values.service.type (list "LoadBalancer" "NodePort") }}{{ $exposed = append $exposed (printf "service.type=%s" .Values.service.type) }}{{ end }}
{{- if and $exposed (not (include "openfusion.hasClientKeys" .)) (not .Values.clientKeys.allowExposureWithoutKeys) }}
{{- fail (printf "%s exposes openfusion outside the cluster without client keys: anyone reaching it would spend your provider keys. Set clientKeys.existingSecret (a Secret with OPENFUSION_API_KEYS) or [[keys]] in config, or set clientKeys.allowExposureWithoutKeys=true if something in front authenticates clients." (join ", " $exposed)) }}
{{- end }}
{{- if regexMatch "(?m)^\\s*shutdown_grace_s\\s*=" .Values.config }}
{{- fail "config sets shutdown_grace_s: set shutdownGraceSeconds instead, so the pod's termination grace period and preStop hook are derived from it (the config file would silently override the value the chart plans with)." }}
{{- end }}
{{- if hasKey .Values.env "OPENFUSION_SHUTDOWN_GRACE_S" }}
{{- fail "env sets OPENFUSION_SHUTDOWN_GRACE_S: set shutdownGraceSeconds instead (the termination grace period is derived from it)." }}
{{- end }}
{{- if hasKey .Values.env "OPENFUSION_FINGERPRINT_KEY" }}
{{- fail "env sets OPENFUSION_FINGERPRINT_KEY, a secret, in plain values: put it in a Secret and name it in fingerprintKey.existingSecret (and .existingSecretKey)." }}
{{- end }}
{{- if hasKey .Values.env "OPENFUSION_WORKERS" }}
{{- fail "env sets OPENFUSION_WORKERS: set workers instead (the pod would get the variable twice)." }}
{{- end }}
{{- $budget := add (int .Values.preStopSleepSeconds) (int (ceil .Values.shutdownGraceSeconds)) }}
{{- $limit := int (include "openfusion.terminationGracePeriodSeconds" .) }}
{{- if le $limit $budget }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be larger than preStopSleepSeconds + shutdownGraceSeconds (%d): Kubernetes would kill in-flight streams before openfusion's own grace ends." $limit $budget) }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled .Values.podDisruptionBudget.minAvailable .Values.podDisruptionBudget.maxUnavailable }}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable, not both (set the other to \"\")." }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail (printf "autoscaling.minReplicas (%d) is larger than autoscaling.maxReplicas (%d)." (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (not .Values.autoscaling.targetCPUUtilizationPercentage) (not .Values.autoscaling.inFlight.enabled) }}
{{- fail "autoscaling.enabled with neither targetCPUUtilizationPercentage nor inFlight.enabled: the autoscaler has no metric." }}
{{- end }}
{{- $sm := .Values.serviceMonitor }}
{{- if and $sm.enabled (include "openfusion.hasClientKeys" .) (not (and $sm.bearerTokenSecret.name $sm.bearerTokenSecret.key)) }}
{{- fail "serviceMonitor.enabled with client keys configured: /metrics needs a key, so every scrape would get 401. Set serviceMonitor.bearerTokenSecret.name and .key (a Secret entry holding an admin key, or a key whose [[keys]] entry has metrics = true, for Prometheus)." }}
{{- end }}
{{- range $name, $_ := .Values.presets }}
{{- if not (regexMatch "^[a-z0-9][a-z0-9_.-]*$" $name) }}
{{- fail (printf "presets: %q is not a valid preset name (lower-case letters, digits, _ . -: the file name is the preset name)" $name) }}
{{- end }}
{{- end }}
{{- end }}

{{/* DATABASE_URL / REDIS_URL: from an existing Secret (required there), else a plain value, else nothing. */}}
{{- define "openfusion.urlEnv" -}}
{{- if .from.existingSecret }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef: {name: {{ .from.existingSecret | quote }}, key: {{ .from.existingSecretKey | quote }}}
{{- else if .from.url }}
- name: {{ .name }}
  value: {{ .from.url | quote }}
{{- end }}
{{- end }}
