{{/* Names are cut to 63 characters: Kubernetes label values and DNS-1123 labels allow no more. */}}

{{- define "harmony-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "<release>-<name>", or the release name alone when it already starts with the name (a release called
harmony-operator gives harmony-operator, not harmony-operator-harmony-operator). */}}
{{- define "harmony-operator.fullname" -}}
{{- $name := include "harmony-operator.name" . }}
{{- $full := ternary .Release.Name (printf "%s-%s" .Release.Name $name) (hasPrefix $name .Release.Name) }}
{{- default $full .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "harmony-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels never change after the first install: a Deployment's selector is immutable. */}}
{{- define "harmony-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "harmony-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "harmony-operator.labels" -}}
helm.sh/chart: {{ include "harmony-operator.chart" . }}
{{ include "harmony-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: harmony
{{- end }}

{{- define "harmony-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "harmony-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "harmony-operator.leaseName" -}}
{{- default (include "harmony-operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{- define "harmony-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The rules the operator needs on HarmonyAutoscalers and their targets, in every watched namespace. */}}
{{- define "harmony-operator.watchRules" -}}
- apiGroups: ["harmony.dev"]
  resources: ["harmonyautoscalers"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["harmony.dev"]
  resources: ["harmonyautoscalers/status"]
  verbs: ["get", "patch"]
- apiGroups: ["apps"]
  resources: ["deployments/scale", "statefulsets/scale"]
  verbs: ["get", "patch"]
{{- range .Values.rbac.extraScaleTargets }}
- apiGroups: [{{ .apiGroup | quote }}]
  resources: [{{ range $i, $r := .resources }}{{ if $i }}, {{ end }}{{ printf "%s/scale" $r | quote }}{{ end }}]
  verbs: ["get", "patch"]
{{- end }}
# Only listed, to find another autoscaler on the same target (a conflict is reported, never resolved).
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["list"]
- apiGroups: ["keda.sh"]
  resources: ["scaledobjects"]
  verbs: ["list"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}
