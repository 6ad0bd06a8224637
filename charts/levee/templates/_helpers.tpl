{{- define "levee.labels" -}}
app.kubernetes.io/name: levee
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}
