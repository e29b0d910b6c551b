{{/*
A CronJob that compiles a pipeline with this chart's images (init container `semcode compile`) and runs
`semcode submit --wait` on it, which uploads it as a new version, starts a run and exits with its outcome.
The retraining and the re-indexing CronJobs are this one with their own values. Called with a dict:
  root       the chart's top-level context
  job        the CronJob's values (retrain, reindex): schedule, timeout, params, extraArgs, resources, ...
  part       the object's name suffix (<fullname>-<part>)
  component  its app.kubernetes.io/component label
  pipeline   train or index: `semcode compile --pipeline`, the package /work/<pipeline>_pipeline.yaml
  args       the `semcode submit` flags that pick the pipeline (--preset P, or --pipeline index)
  params     the pipeline parameters the chart sets, KEY=VALUE each (then job.params, then job.extraArgs)
*/}}
{{- define "semcode.submitCronJob" -}}
{{- $root := .root }}
{{- $r := .job }}
{{- $package := printf "/work/%s_pipeline.yaml" .pipeline }}
apiVersion: batch/v1
kind: CronJob
metadata:
  name: {{ include "semcode.fullname" $root }}-{{ .part }}
  labels:
    {{- include "semcode.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  schedule: {{ $r.schedule | quote }}
  {{- with $r.timeZone }}
  timeZone: {{ . | quote }}
  {{- end }}
  suspend: {{ $r.suspend }}
  concurrencyPolicy: {{ $r.concurrencyPolicy }}
  {{- with $r.startingDeadlineSeconds }}
  startingDeadlineSeconds: {{ . }}
  {{- end }}
  successfulJobsHistoryLimit: {{ $r.successfulJobsHistoryLimit }}
  failedJobsHistoryLimit: {{ $r.failedJobsHistoryLimit }}
  jobTemplate:
    metadata:
      labels:
        {{- include "semcode.labels" $root | nindent 8 }}
        app.kubernetes.io/component: {{ .component }}
    spec:
      backoffLimit: {{ $r.backoffLimit }}
      {{- with $r.activeDeadlineSeconds }}
      activeDeadlineSeconds: {{ . }}
      {{- end }}
      template:
        metadata:
          labels:
            {{- include "semcode.selectorLabels" $root | nindent 12 }}
            app.kubernetes.io/component: {{ .component }}
        spec:
          restartPolicy: Never
          serviceAccountName: {{ include "semcode.runnerServiceAccountName" $root }}
          automountServiceAccountToken: false
          {{- with $root.Values.imagePullSecrets }}
          imagePullSecrets:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          securityContext:
            {{- toYaml $root.Values.podSecurityContext | nindent 12 }}
          initContainers:
            # The pipeline YAML names <image.registry>/semcode-{cpu,gpu}:<image.tag>, whatever the image was built with.
            - name: compile
              image: {{ include "semcode.cpuImage" $root }}
              imagePullPolicy: {{ $root.Values.image.pullPolicy }}
              command: ["semcode"]
              args: ["compile", "--pipeline", {{ .pipeline | quote }}, "--output", {{ $package | quote }}]
              env:
                - name: SEMCODE_IMAGE_REGISTRY
                  value: {{ include "semcode.registry" $root | quote }}
                - name: SEMCODE_IMAGE_TAG
                  value: {{ include "semcode.tag" $root | quote }}
                - name: HOME
                  value: /tmp
              resources:
                {{- toYaml $r.resources | nindent 16 }}
              securityContext:
                {{- toYaml $root.Values.securityContext | nindent 16 }}
              volumeMounts:
                - name: work
                  mountPath: /work
                - name: tmp
                  mountPath: /tmp
          containers:
            - name: submit
              image: {{ include "semcode.cpuImage" $root }}
              imagePullPolicy: {{ $root.Values.image.pullPolicy }}
              command: ["semcode"]
              args:
                - submit
                - --host
                - {{ required "kfp.host is required: the KFP API/UI URL semcode submit talks to" $root.Values.kfp.host | quote }}
                {{- range .args }}
                - {{ . | quote }}
                {{- end }}
                - --wait
                - {{ ternary "--cache" "--no-cache" (default false $r.cache) }}
                - --timeout
                - {{ $r.timeout | quote }}
                - --package
                - {{ $package }}
                {{- with $root.Values.kfp.namespace }}
                - --namespace
                - {{ . | quote }}
                {{- end }}
                {{- range .params }}
                - --param
                - {{ . | quote }}
                {{- end }}
                {{- range $key, $value := $r.params }}
                - --param
                - {{ printf "%s=%s" $key (ternary $value (toJson $value) (kindIs "string" $value)) | quote }}
                {{- end }}
                {{- range $r.extraArgs }}
                - {{ . | quote }}
                {{- end }}
              env:
                - name: HOME
                  value: /tmp
                {{- if $root.Values.kfp.serviceAccountToken.enabled }}
                - name: KFP_TOKEN_FILE
                  value: /var/run/secrets/kubeflow/pipelines/token
                {{- end }}
              resources:
                {{- toYaml $r.resources | nindent 16 }}
              securityContext:
                {{- toYaml $root.Values.securityContext | nindent 16 }}
              volumeMounts:
                - name: work
                  mountPath: /work
                  readOnly: true
                - name: tmp
                  mountPath: /tmp
                {{- if $root.Values.kfp.serviceAccountToken.enabled }}
                - name: kfp-token
                  mountPath: /var/run/secrets/kubeflow/pipelines
                  readOnly: true
                {{- end }}
          volumes:
            - name: work
              emptyDir:
                sizeLimit: 64Mi
            - name: tmp
              emptyDir:
                sizeLimit: 1Gi
            {{- if $root.Values.kfp.serviceAccountToken.enabled }}
            - name: kfp-token
              projected:
                sources:
                  - serviceAccountToken:
                      path: token
                      audience: {{ $root.Values.kfp.serviceAccountToken.audience | quote }}
                      expirationSeconds: {{ $root.Values.kfp.serviceAccountToken.expirationSeconds }}
            {{- end }}
          {{- with $r.nodeSelector }}
          nodeSelector:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          {{- with $r.tolerations }}
          tolerations:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          {{- with $r.affinity }}
          affinity:
            {{- toYaml . | nindent 12 }}
          {{- end }}
{{- end }}
