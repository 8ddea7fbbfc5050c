{{/*
Admission mode (values `admission.mode`): which objects the in-apiserver CEL policies guard and
which the webhooks guard.

- webhook: the webhooks guard VMs and VMIMs (no admission policies).
- hybrid: ValidatingAdmissionPolicies + a MutatingAdmissionPolicy guard WaitAsReceiver VMs
  and run the stateless VMIM rules; the webhooks only see VMIMs (generated migrationID,
  pairing labels, the rules that need cluster state). A webhook outage never touches a VM.
- cel: only the policies; nothing calls the webhook server.
- auto: hybrid when the cluster serves the policy APIs, else webhook.

The policies are assembled from files/admission-policies.json, generated from webhook/cel
(`python -m webhook.cel.chart`), exactly as `dlm-guard policy export` assembles them.
*/}}

{{- define "dlm-guard.admission.vapServed" -}}
{{- if .Capabilities.APIVersions.Has "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy" }}true{{ end -}}
{{- end -}}

{{/* The MutatingAdmissionPolicy API version served: v1 (GA in 1.36) or v1beta1 (1.34/1.35
     with --runtime-config=admissionregistration.k8s.io/v1beta1=true), else "". */}}
{{- define "dlm-guard.admission.mapVersion" -}}
{{- if .Capabilities.APIVersions.Has "admissionregistration.k8s.io/v1/MutatingAdmissionPolicy" -}}
v1
{{- else if .Capabilities.APIVersions.Has "admissionregistration.k8s.io/v1beta1/MutatingAdmissionPolicy" -}}
v1beta1
{{- end -}}
{{- end -}}

{{- define "dlm-guard.admission.mode" -}}
{{- $mode := .Values.admission.mode -}}
{{- $served := and (include "dlm-guard.admission.vapServed" .) (include "dlm-guard.admission.mapVersion" .) -}}
{{- if eq $mode "auto" -}}
{{- ternary "hybrid" "webhook" (not (not $served)) -}}
{{- else if and (ne $mode "webhook") (not $served) -}}
{{- fail (printf "admission.mode=%s needs admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy and MutatingAdmissionPolicy (v1, Kubernetes >= 1.36; or v1beta1 on 1.34/1.35 with --runtime-config=admissionregistration.k8s.io/v1beta1=true), which this cluster does not serve: use admission.mode=webhook (or auto), or with helm template pass --api-versions admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy --api-versions admissionregistration.k8s.io/v1/MutatingAdmissionPolicy" $mode) -}}
{{- else -}}
{{- $mode -}}
{{- end -}}
{{- end -}}

{{/* The bindings' namespaceSelector: the namespaces the webhooks never see (names and the
     ignore label, plus the opt-in labels) and the policy's exemptNamespaces. */}}
{{- define "dlm-guard.admission.namespaceSelector" -}}
{{- $exempt := concat (include "dlm-guard.excludedNamespaces" . | fromYamlArray) .Values.policy.exemptNamespaces | uniq | sortAlpha -}}
{{- $sel := .Values.webhook.namespaceSelector -}}
{{- $selector := dict "matchExpressions" (list
      (dict "key" "kubernetes.io/metadata.name" "operator" "NotIn" "values" $exempt)
      (dict "key" $sel.excludeLabel "operator" "NotIn" "values" (list "true"))) -}}
{{- with $sel.matchLabels -}}
{{- $_ := set $selector "matchLabels" . -}}
{{- end -}}
{{- toYaml $selector -}}
{{- end -}}
