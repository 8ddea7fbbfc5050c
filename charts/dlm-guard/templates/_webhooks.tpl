{{/*
Admission webhook entries.

Scope is the whole point: the webhooks must only ever see decentralized VMIMs and WaitAsReceiver
VMs, so that an outage of dlm-guard (validating failurePolicy Fail) cannot block ordinary VM
operations. matchConditions apply to a whole webhook entry, hence one entry per resource, each
with its own CEL. All conditions of an entry must be true for the call to happen.

CEL notes (admission matchConditions, GA in 1.30):
- `object` is null for DELETE and `oldObject` is null for CREATE; we register CREATE and UPDATE
  only, but every expression is still null-safe.
- `object` is untyped (dyn): `has(x.f)` on a missing intermediate field is an error, not false,
  so every level is tested. An error in a condition counts as a call under failurePolicy Fail,
  and as a skip under Ignore: expressions must not error.
- `&&` / `||` absorb errors from the side that is not needed (CEL commutative logic), but the
  guards below are written so that no side errors in the first place.
*/}}

{{- define "dlm-guard.webhook.caInjection" -}}
{{- if eq .Values.webhook.tls.mode "certManager" -}}
annotations:
  cert-manager.io/inject-ca-from: {{ printf "%s/%s" .Release.Namespace (include "dlm-guard.webhook.fullname" .) | quote }}
{{- end -}}
{{- end -}}

{{/* One webhook entry: (dict "ctx" $ "name" .. "path" .. "resource" .. "failurePolicy" ..
     "conditions" <template name> "mutating" bool "caBundle" <base64 or "">) */}}
{{- define "dlm-guard.webhook.entry" -}}
{{- $ctx := .ctx -}}
{{- $wh := $ctx.Values.webhook -}}
- name: {{ .name }}
  admissionReviewVersions: ["v1"]
  sideEffects: None
  timeoutSeconds: {{ $wh.timeoutSeconds }}
  failurePolicy: {{ .failurePolicy }}
  matchPolicy: Equivalent
  {{- if .mutating }}
  # A later mutating webhook may change the object: run again so our defaults still hold.
  reinvocationPolicy: IfNeeded
  {{- end }}
  clientConfig:
    service:
      name: {{ include "dlm-guard.webhook.fullname" $ctx }}
      namespace: {{ $ctx.Release.Namespace }}
      path: {{ .path }}
      port: 443
    {{- with .caBundle }}
    caBundle: {{ . }}
    {{- end }}
  rules:
    - apiGroups: ["kubevirt.io"]
      apiVersions: ["v1"]
      operations: ["CREATE", "UPDATE"]
      resources: [{{ .resource | quote }}]
      scope: Namespaced
  namespaceSelector:
    {{- with $wh.namespaceSelector.matchLabels }}
    matchLabels:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    matchExpressions:
      - key: kubernetes.io/metadata.name
        operator: NotIn
        values:
          {{- include "dlm-guard.excludedNamespaces" $ctx | nindent 10 }}
      - key: {{ $wh.namespaceSelector.excludeLabel }}
        operator: NotIn
        values: ["true"]
  matchConditions:
    {{- include .conditions $ctx | nindent 4 }}
{{- end -}}

{{/* ---- Predicates (CEL fragments) --------------------------------------------------- */}}

{{/* A decentralized migration: sendTo or receive set (both set is the both-roles finding). */}}
{{- define "dlm-guard.cel.decentralized" -}}
({{ . }} != null && has({{ . }}.spec) && (has({{ . }}.spec.sendTo) || has({{ . }}.spec.receive)))
{{- end -}}

{{/* The restore-run-strategy annotation, or "" when absent. */}}
{{- define "dlm-guard.cel.restoreAnnotation" -}}
(has({{ . }}.metadata.annotations) && 'kubevirt.io/restore-run-strategy' in {{ . }}.metadata.annotations ? string({{ . }}.metadata.annotations['kubevirt.io/restore-run-strategy']) : '')
{{- end -}}

{{- define "dlm-guard.cel.waitAsReceiver" -}}
object != null && has(object.spec) && has(object.spec.runStrategy) && object.spec.runStrategy == 'WaitAsReceiver'
{{- end -}}

{{/* ---- Conditions per webhook entry --------------------------------------------------- */}}

{{- define "dlm-guard.cel.validateVMIM" -}}
- name: decentralized-migration
  # Old object too: an UPDATE that strips sendTo/receive is an immutable-spec violation.
  expression: >-
    {{ include "dlm-guard.cel.decentralized" "object" }} ||
    {{ include "dlm-guard.cel.decentralized" "oldObject" }}
- name: create-or-spec-change
  # Only spec changes are checked on UPDATE (immutable-spec). Skipping metadata-only updates keeps
  # KubeVirt's finalizer and label updates working while the webhook is down.
  expression: >-
    request.operation != 'UPDATE' || object == null || oldObject == null ||
    has(object.spec) != has(oldObject.spec) ||
    (has(object.spec) && object.spec != oldObject.spec)
{{- end -}}

{{- define "dlm-guard.cel.mutateVMIM" -}}
- name: decentralized-migration
  # Exactly one role: upstream's IsDecentralized(); a both-roles VMIM is not mutated.
  expression: >-
    object != null && has(object.spec) && has(object.spec.sendTo) != has(object.spec.receive)
- name: create-or-labels-stale
  # On UPDATE the only possible mutation is restoring our pairing labels (the spec is
  # immutable), so call only when they are missing or differ. Keep in sync with
  # webhook/mutations.py.
  expression: >-
    request.operation != 'UPDATE' ||
    !has(object.metadata.labels) ||
    !('dlm-guard.io/role' in object.metadata.labels) ||
    !('dlm-guard.io/migration-id' in object.metadata.labels) ||
    object.metadata.labels['dlm-guard.io/role'] != (has(object.spec.sendTo) ? 'source' : 'target') ||
    object.metadata.labels['dlm-guard.io/migration-id'] != (has(object.spec.sendTo)
      ? (has(object.spec.sendTo.migrationID) ? object.spec.sendTo.migrationID : '')
      : (has(object.spec.receive.migrationID) ? object.spec.receive.migrationID : ''))
{{- end -}}

{{- define "dlm-guard.cel.validateVM" -}}
- name: wait-as-receiver
  expression: >-
    {{ include "dlm-guard.cel.waitAsReceiver" . }}
- name: create-or-checked-change
  # The VM rules read the template and the restore-run-strategy annotation. Skipping other updates
  # keeps KubeVirt's finalizer handling of receiver VMs working while the webhook is down.
  expression: >-
    request.operation != 'UPDATE' || oldObject == null || !has(oldObject.spec) ||
    object.spec != oldObject.spec ||
    {{ include "dlm-guard.cel.restoreAnnotation" "object" }} !=
    {{ include "dlm-guard.cel.restoreAnnotation" "oldObject" }}
{{- end -}}

{{- define "dlm-guard.cel.mutateVM" -}}
- name: wait-as-receiver
  expression: >-
    {{ include "dlm-guard.cel.waitAsReceiver" . }}
- name: restore-run-strategy-missing
  # The only VM mutation: add kubevirt.io/restore-run-strategy when it is absent.
  # Keep in sync with webhook/mutations.py.
  expression: >-
    !has(object.metadata.annotations) ||
    !('kubevirt.io/restore-run-strategy' in object.metadata.annotations)
{{- end -}}
