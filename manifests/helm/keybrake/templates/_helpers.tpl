{{- define "keybrake.image" -}}
{{- $root := index . 0 -}}{{- $name := index . 1 -}}{{- $component := index . 2 -}}
{{- $digest := (index $root.Values $component "image").digest -}}
{{- if $root.Values.image.digest -}}{{ fail "image.digest would pin both images to one digest; set operator.image.digest and proxy.image.digest (each image has its own)" }}
{{- else if $digest -}}
{{ $root.Values.image.registry }}/{{ $name }}@{{ $digest }}
{{- else -}}
{{ $root.Values.image.registry }}/{{ $name }}:{{ $root.Values.image.tag | default $root.Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{- define "keybrake.redisUrl" -}}
{{- if .Values.redis.url -}}{{ .Values.redis.url }}
{{- else if .Values.redis.enabled -}}redis://keybrake-redis.{{ .Release.Namespace }}.svc:6379/
{{- else -}}{{ fail "redis.url is required when redis.enabled=false (the operator and the proxy need Redis)" }}
{{- end -}}
{{- end -}}

{{- define "keybrake.redisMode" -}}
{{- if not (has .Values.redis.mode (list "single" "cluster" "sentinel")) -}}{{ fail "redis.mode must be single, cluster or sentinel" }}
{{- else if and (ne .Values.redis.mode "single") .Values.redis.enabled -}}{{ fail (printf "redis.mode=%s needs redis.enabled=false and redis.url listing the %s (the bundled Redis is one node)" .Values.redis.mode (ternary "cluster's seed nodes" "sentinels" (eq .Values.redis.mode "cluster"))) }}
{{- else -}}{{ .Values.redis.mode }}
{{- end -}}
{{- end -}}

{{/* Egress from the proxy or the operator to Redis: the bundled pods, or the external CIDRs. */}}
{{- define "keybrake.redisEgress" -}}
{{- if .Values.redis.enabled }}
- to:
    - podSelector:
        matchLabels:
          app.kubernetes.io/name: keybrake-redis
  ports:
    - {protocol: TCP, port: 6379}
{{- else if .Values.redis.external.cidrs }}
# The external Redis (redis.external).
- to:
    {{- range .Values.redis.external.cidrs }}
    - ipBlock: {cidr: {{ . }}}
    {{- end }}
  ports:
    {{- range .Values.redis.external.ports }}
    - {protocol: TCP, port: {{ . }}}
    {{- end }}
{{- end }}
{{- end -}}

{{/* The Redis TLS files' variables, volume mounts and volumes (redis.tls). */}}
{{- define "keybrake.redisTlsEnv" -}}
{{- if .Values.redis.tls.caSecret }}
- name: KEYBRAKE_REDIS_CA_FILE
  value: /etc/keybrake/redis-ca/ca.crt
{{- end }}
{{- if .Values.redis.tls.clientSecret }}
- name: KEYBRAKE_REDIS_CLIENT_CERT_FILE
  value: /etc/keybrake/redis-client/tls.crt
- name: KEYBRAKE_REDIS_CLIENT_KEY_FILE
  value: /etc/keybrake/redis-client/tls.key
{{- end }}
{{- end -}}

{{- define "keybrake.redisTlsMounts" -}}
{{- if .Values.redis.tls.caSecret }}
- name: redis-ca
  mountPath: /etc/keybrake/redis-ca
  readOnly: true
{{- end }}
{{- if .Values.redis.tls.clientSecret }}
- name: redis-client
  mountPath: /etc/keybrake/redis-client
  readOnly: true
{{- end }}
{{- end -}}

{{- define "keybrake.redisTlsVolumes" -}}
{{- if .Values.redis.tls.caSecret }}
- name: redis-ca
  secret:
    secretName: {{ .Values.redis.tls.caSecret }}
    items:
      - {key: ca.crt, path: ca.crt}
{{- end }}
{{- if .Values.redis.tls.clientSecret }}
- name: redis-client
  secret:
    secretName: {{ .Values.redis.tls.clientSecret }}
    items:
      - {key: tls.crt, path: tls.crt}
      - {key: tls.key, path: tls.key}
{{- end }}
{{- end -}}

{{- define "keybrake.labels" -}}
app.kubernetes.io/part-of: keybrake
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "keybrake.podSecurity" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "keybrake.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{- define "keybrake.proxyTls" -}}
{{- if not (has .Values.proxy.tls.mode (list "secret" "certManager" "plaintext")) -}}{{ fail "proxy.tls.mode must be secret, certManager or plaintext" }}
{{- else -}}{{ ne .Values.proxy.tls.mode "plaintext" }}
{{- end -}}
{{- end -}}

{{- define "keybrake.proxyUrl" -}}
{{- if and .Values.proxy.publicUrl (eq (include "keybrake.proxyTls" .) "true") (not (hasPrefix "https://" .Values.proxy.publicUrl)) -}}{{ fail "proxy.publicUrl must be https:// while the proxy serves TLS (proxy.tls.mode): an http:// URL would send vault tokens in clear text" }}
{{- else if .Values.proxy.publicUrl -}}{{ .Values.proxy.publicUrl }}
{{- else -}}{{ ternary "https" "http" (eq (include "keybrake.proxyTls" .) "true") }}://keybrake-proxy.{{ .Release.Namespace }}.svc:8080
{{- end -}}
{{- end -}}
