{{- /*
The KEDA external scaler (values keda.*): a second container of the operator pod running `harmony-scaler`
from the same image. It reads HarmonyAutoscalers and writes their status.keda with the operator's
ServiceAccount (RBAC: get harmonyautoscalers, patch harmonyautoscalers/status, get <kind>/scale, all
already granted to the operator).
*/}}
{{- define "harmony-operator.kedaScalerContainer" -}}
{{- if and .Values.keda.tls.requireClientCert (not .Values.keda.tls.secretName) }}
{{- fail "keda.tls.requireClientCert needs keda.tls.secretName: client certificates are checked only over TLS" }}
{{- end }}
- name: keda-scaler
  image: {{ include "harmony-operator.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command: ["harmony-scaler"]
  args:
    - --port={{ .Values.keda.port }}
    - --stale-after-intervals={{ .Values.keda.staleAfterIntervals }}
    - --log-format={{ .Values.logFormat }}
    {{- if .Values.keda.allowCrossNamespace }}
    - --allow-cross-namespace
    {{- end }}
    {{- if .Values.keda.tls.secretName }}
    - --tls-cert=/etc/harmony/keda-tls/tls.crt
    - --tls-key=/etc/harmony/keda-tls/tls.key
    {{- if .Values.keda.tls.requireClientCert }}
    - --tls-client-ca=/etc/harmony/keda-tls/ca.crt
    {{- end }}
    {{- end }}
    {{- if .Values.verbose }}
    - --verbose
    {{- end }}
  ports:
    - name: keda-grpc
      containerPort: {{ .Values.keda.port }}
      protocol: TCP
  # A TCP probe: the scaler answers KEDA's calls only; its answers never depend on the probe.
  readinessProbe:
    tcpSocket:
      port: keda-grpc
    periodSeconds: 10
  livenessProbe:
    tcpSocket:
      port: keda-grpc
    periodSeconds: 20
    failureThreshold: 3
  resources:
    {{- toYaml .Values.keda.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  {{- if .Values.keda.tls.secretName }}
  volumeMounts:
    - name: keda-tls
      mountPath: /etc/harmony/keda-tls
      readOnly: true
  {{- end }}
{{- end }}
