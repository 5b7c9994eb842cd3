{{/* What `helm install` prints afterwards (NOTES.txt); a named template so tests can render it. */}}
{{- define "openfusion.notes" -}}
openfusion {{ .Chart.AppVersion }} is deployed as {{ include "openfusion.fullname" . }} in namespace {{ .Release.Namespace }}.
{{- $svc := printf "%s.%s.svc" (include "openfusion.fullname" .) .Release.Namespace }}

In the cluster, point any OpenAI client at:
  http://{{ $svc }}:{{ .Values.service.port }}/v1
{{- if .Values.ingress.enabled }}
Through the Ingress:
{{- range .Values.ingress.hosts }}
  http{{ if $.Values.ingress.tls }}s{{ end }}://{{ .host }}/v1
{{- end }}
{{- end }}

Try it from your machine:
  kubectl -n {{ .Release.Namespace }} port-forward svc/{{ include "openfusion.fullname" . }} 8000:{{ .Values.service.port }}
  curl http://127.0.0.1:8000/readyz
{{- if not (or .Values.providerKeys.existingSecret .Values.devSecret.create .Values.extraEnvFrom .Values.config) }}

WARNING: no provider keys are configured (providerKeys.existingSecret): /readyz answers 503
"no provider configured" and the pods never become ready. For example:
  kubectl -n {{ .Release.Namespace }} create secret generic openfusion-providers --from-literal=OPENROUTER_API_KEY=sk-or-...
  helm upgrade {{ .Release.Name }} ... --set providerKeys.existingSecret=openfusion-providers
{{- end }}
{{- if not (include "openfusion.hasClientKeys" .) }}

No client keys are configured: anyone who can reach the Service can use your provider keys.
Fine for a private sidecar; otherwise set clientKeys.existingSecret.
{{- end }}
{{- if not (include "openfusion.hasDatabase" .) }}

Activity (history, spend) is kept in SQLite {{ if .Values.sqlite.existingClaim }}on the claim {{ .Values.sqlite.existingClaim }}{{ else }}on an emptyDir: it is lost with the pod{{ end }}.
Set database.existingSecret (DATABASE_URL=postgresql://...) to keep it in PostgreSQL and to run more than one replica.
{{- end }}
{{- if .Values.devSecret.create }}

devSecret.create is on: the keys in it are stored in the Helm release. Use your own Secrets beyond a trial.
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1/ServiceMonitor")) }}

serviceMonitor.enabled is set but this cluster has no monitoring.coreos.com/v1 ServiceMonitor (Prometheus Operator): none was created.
{{- end }}
{{- if and .Values.autoscaling.enabled .Values.autoscaling.inFlight.enabled }}

The autoscaler also scales on {{ .Values.autoscaling.inFlight.metricName }} (a Pods metric): it needs Prometheus
scraping /metrics and a custom metrics adapter (e.g. prometheus-adapter). Check it with:
  kubectl get --raw "/apis/custom.metrics.k8s.io/v1beta1/namespaces/{{ .Release.Namespace }}/pods/*/{{ .Values.autoscaling.inFlight.metricName }}"
{{- end }}

On shutdown each pod keeps serving for {{ .Values.preStopSleepSeconds }} s (preStop) while it leaves the endpoints, then gives
in-flight streams {{ .Values.shutdownGraceSeconds }} s to finish; Kubernetes kills it after {{ include "openfusion.terminationGracePeriodSeconds" . }} s.
{{- end }}
