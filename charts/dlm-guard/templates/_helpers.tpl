{{/* Names ------------------------------------------------------------------------------ */}}

{{- define "dlm-guard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-chart, truncated so that "<fullname>-reconciler-metrics" (19 more chars) stays a
     valid Service name (63). */}}
{{- define "dlm-guard.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 44 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 44 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 44 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "dlm-guard.webhook.fullname" -}}{{ include "dlm-guard.fullname" . }}-webhook{{- end -}}
{{- define "dlm-guard.reconciler.fullname" -}}{{ include "dlm-guard.fullname" . }}-reconciler{{- end -}}
{{/* The reconciler's Lease: fixed in the reconciler (reconciler/settings.py lease_name), one per
     namespace. RBAC is scoped to this name. */}}
{{- define "dlm-guard.reconciler.leaseName" -}}dlm-guard-reconciler{{- end -}}
{{- define "dlm-guard.webhook.tlsSecretName" -}}
{{- if eq .Values.webhook.tls.mode "existingSecret" -}}
{{- .Values.webhook.tls.existingSecret.name -}}
{{- else -}}
{{- include "dlm-guard.webhook.fullname" . }}-tls
{{- end -}}
{{- end -}}
{{- define "dlm-guard.webhook.serviceDNS" -}}
{{- include "dlm-guard.webhook.fullname" . }}.{{ .Release.Namespace }}.svc
{{- end -}}

{{/* Labels ----------------------------------------------------------------------------- */}}

{{- define "dlm-guard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "dlm-guard.labels" -}}
helm.sh/chart: {{ include "dlm-guard.chart" . }}
app.kubernetes.io/name: {{ include "dlm-guard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: dlm-guard
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "webhook") */}}
{{- define "dlm-guard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dlm-guard.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "dlm-guard.componentLabels" -}}
{{ include "dlm-guard.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Image ------------------------------------------------------------------------------ */}}

{{- define "dlm-guard.image" -}}
{{- $repo := .Values.image.repository -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repo .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Security: the restricted Pod Security Standard, not overridable. ------------------- */}}

{{- define "dlm-guard.podSecurityContext" -}}
runAsNonRoot: true
{{- with .Values.securityContext.runAsUser }}
runAsUser: {{ . }}
{{- end }}
{{- with .Values.securityContext.runAsGroup }}
runAsGroup: {{ . }}
# Group owner of mounted Secret files (mode 0440).
fsGroup: {{ . }}
{{- end }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "dlm-guard.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* topologySpreadConstraints with a default labelSelector: (dict "ctx" $ "component" "webhook"
     "constraints" list) */}}
{{- define "dlm-guard.topologySpread" -}}
{{- $selector := include "dlm-guard.selectorLabels" (dict "ctx" .ctx "component" .component) | fromYaml -}}
{{- $out := list -}}
{{- range .constraints -}}
{{- $c := deepCopy . -}}
{{- if not (hasKey $c "labelSelector") -}}
{{- $_ := set $c "labelSelector" (dict "matchLabels" $selector) -}}
{{- end -}}
{{- $out = append $out $c -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* PodDisruptionBudget spec body: (dict "pdb" .Values.x.podDisruptionBudget "replicas" n
     "component" "webhook") */}}
{{- define "dlm-guard.pdbSpec" -}}
{{- $pdb := .pdb -}}
{{- if and (not (kindIs "invalid" $pdb.minAvailable)) (not (kindIs "invalid" $pdb.maxUnavailable)) -}}
{{- fail (printf "%s.podDisruptionBudget: set minAvailable or maxUnavailable, not both" .component) -}}
{{- end -}}
{{- $min := $pdb.minAvailable -}}
{{- if and (kindIs "invalid" $min) (kindIs "invalid" $pdb.maxUnavailable) -}}
{{- $min = 1 -}}
{{- end -}}
{{- if and (not (kindIs "invalid" $min)) (not (kindIs "string" $min)) -}}
{{- if ge (int $min) (int .replicas) -}}
{{- fail (printf "%s.podDisruptionBudget.minAvailable (%d) must be below %s.replicas (%d), or no node could ever be drained: raise the replicas or disable the budget" .component (int $min) .component (int .replicas)) -}}
{{- end -}}
{{- end -}}
{{- if not (kindIs "invalid" $min) }}
minAvailable: {{ $min }}
{{- else }}
maxUnavailable: {{ $pdb.maxUnavailable }}
{{- end }}
{{- end -}}

{{/* Namespaces the webhook never sees, in order: the fixed three, then the user's. */}}
{{- define "dlm-guard.excludedNamespaces" -}}
{{- $ns := list "kube-system" "kube-node-lease" .Release.Namespace -}}
{{- range .Values.webhook.namespaceSelector.excludeNamespaces -}}
{{- $ns = append $ns . -}}
{{- end -}}
{{- toYaml (uniq $ns) -}}
{{- end -}}

{{/* Contradictory values ---------------------------------------------------------------- */}}

{{- define "dlm-guard.validate" -}}
{{- if and (not .Values.webhook.enabled) (not .Values.reconciler.enabled) -}}
{{- fail "webhook.enabled and reconciler.enabled are both false: nothing to install" -}}
{{- end -}}
{{- $tls := .Values.webhook.tls -}}
{{- if eq $tls.mode "existingSecret" -}}
{{- if not $tls.existingSecret.name -}}
{{- fail "webhook.tls.mode=existingSecret needs webhook.tls.existingSecret.name" -}}
{{- end -}}
{{- if not (contains "-----BEGIN CERTIFICATE-----" $tls.existingSecret.caBundle) -}}
{{- fail "webhook.tls.mode=existingSecret needs webhook.tls.existingSecret.caBundle: the PEM CA that signed the Secret's certificate" -}}
{{- end -}}
{{- else -}}
{{- if or $tls.existingSecret.name $tls.existingSecret.caBundle -}}
{{- fail (printf "webhook.tls.existingSecret is set but webhook.tls.mode is %q: set mode=existingSecret or clear it" $tls.mode) -}}
{{- end -}}
{{- end -}}
{{- if and (ne $tls.mode "certManager") $tls.certManager.issuerRef -}}
{{- fail (printf "webhook.tls.certManager.issuerRef is set but webhook.tls.mode is %q" $tls.mode) -}}
{{- end -}}
{{- if and .Values.reconciler.enabled (gt (int .Values.reconciler.replicas) 1) (not .Values.reconciler.leaderElection.enabled) -}}
{{- fail "reconciler.replicas > 1 needs reconciler.leaderElection.enabled: two replicas would act at once" -}}
{{- end -}}
{{- $names := list -}}
{{- range .Values.peers.clusters -}}
{{- if eq .name "local" -}}
{{- fail "peers.clusters: the name \"local\" is reserved for the cluster the reconciler runs in" -}}
{{- end -}}
{{- if has .name $names -}}
{{- fail (printf "peers.clusters: %q is listed twice" .name) -}}
{{- end -}}
{{- $names = append $names .name -}}
{{- end -}}
{{- if and (or .Values.peers.clusters .Values.peers.existingSecrets) (not .Values.reconciler.enabled) -}}
{{- fail "peers are configured but reconciler.enabled is false: only the reconciler uses them" -}}
{{- end -}}
{{- if and .Values.metrics.serviceMonitor.webhookTLSConfig (not .Values.metrics.serviceMonitor.enabled) -}}
{{- fail "metrics.serviceMonitor.webhookTLSConfig is set but metrics.serviceMonitor.enabled is false" -}}
{{- end -}}
{{- end -}}
