{{/*
Names, labels and the config file. Nothing here may depend on the cluster (no `lookup`) or on
chance (no genCA, no rand*): `helm template` must render the same bytes on every run, so that
GitOps tools never see a diff that is not a change.
*/}}

{{- define "pullsecret-injector.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: also the webhook configuration, Service, Lease and TLS Secret prefix. */}}
{{- define "pullsecret-injector.fullname" -}}
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

{{- define "pullsecret-injector.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pullsecret-injector.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pullsecret-injector.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: webhook
{{- end }}

{{/* Labels of every object but the component, which the pod selector includes. */}}
{{- define "pullsecret-injector.baseLabels" -}}
helm.sh/chart: {{ include "pullsecret-injector.chart" . }}
app.kubernetes.io/name: {{ include "pullsecret-injector.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pullsecret-injector
{{- end }}

{{- define "pullsecret-injector.labels" -}}
{{ include "pullsecret-injector.baseLabels" . }}
app.kubernetes.io/component: webhook
{{- end }}

{{- define "pullsecret-injector.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pullsecret-injector.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "pullsecret-injector.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Secret holding the serving certificate: made by the injector (self), cert-manager, or you. */}}
{{- define "pullsecret-injector.tlsSecretName" -}}
{{- if eq .Values.certs.mode "external" }}
{{- required "certs.external.secretName is required when certs.mode is external" .Values.certs.external.secretName }}
{{- else }}
{{- printf "%s-tls" (include "pullsecret-injector.fullname" .) }}
{{- end }}
{{- end }}

{{/* Where the config file is mounted in the pod. */}}
{{- define "pullsecret-injector.configPath" -}}
/etc/pullsecret-injector/config.yaml
{{- end }}

{{/*
The injector's config file (see the top-level README), as YAML. The binary takes the
namespace it runs in from PULLSECRET_INJECTOR_POD_NAMESPACE, so it is not written here.
*/}}
{{- define "pullsecret-injector.config" -}}
{{- $fullname := include "pullsecret-injector.fullname" . -}}
{{- /* Both families: the binary's [::] listener also accepts IPv4. */ -}}
listen: {{ printf "[::]:%d" (.Values.containerPorts.webhook | int) | quote }}
metricsListen: {{ printf "[::]:%d" (.Values.containerPorts.metrics | int) | quote }}
{{- if eq .Values.certs.mode "self" }}
{{- $certificates := dict
  "secretName" (include "pullsecret-injector.tlsSecretName" .)
  "webhookConfigurationName" $fullname
  "serviceName" $fullname }}
{{- with .Values.certs.self }}
{{- $certificates = merge $certificates . }}
{{- end }}
{{- dict "certificates" $certificates | toYaml | nindent 0 }}
{{- else }}
{{- dict "tls" (dict "certFile" "/certs/tls.crt" "keyFile" "/certs/tls.key") | toYaml | nindent 0 }}
{{- end }}
{{- dict "optOutAnnotation" .Values.optOutAnnotation | toYaml | nindent 0 }}
{{- /* Copies go where the webhook injects: the same opt-in selector and exclusions. */}}
{{- $namespaceSelector := dict }}
{{- with include "pullsecret-injector.namespaceMatchLabels" . | fromYaml }}
{{- $_ := set $namespaceSelector "matchLabels" . }}
{{- end }}
{{- with .Values.webhook.namespaceSelector.matchExpressions }}
{{- $_ := set $namespaceSelector "matchExpressions" . }}
{{- end }}
{{- dict "namespaceSelector" $namespaceSelector | toYaml | nindent 0 }}
{{- dict "excludeNamespaces" (include "pullsecret-injector.excludedNamespaces" . | fromYamlArray) | toYaml | nindent 0 }}
{{- dict "leaderElection" (dict "leaseName" $fullname) | toYaml | nindent 0 }}
{{- with .Values.limits }}
{{- dict "limits" . | toYaml | nindent 0 }}
{{- end }}
{{- with .Values.replicationRateLimit }}
{{- dict "replicationRateLimit" . | toYaml | nindent 0 }}
{{- end }}
{{- if include "pullsecret-injector.credentialProviders" . }}
{{- dict "credentialProviders" (dict
  "configFile" (include "pullsecret-injector.credentialProvidersPath" .)
  "binDir" (include "pullsecret-injector.pluginDir" .)
  "timeoutSeconds" (.Values.credentialProviders.timeoutSeconds | int)) | toYaml | nindent 0 }}
{{- end }}
{{- dict "secrets" .Values.secrets | toYaml | nindent 0 }}
{{- with .Values.retiredSecrets }}
{{- dict "retiredSecrets" . | toYaml | nindent 0 }}
{{- end }}
{{- end }}

{{/* The labels a selected namespace has, as a YAML map (empty: `{}`): the opt-in label in
optIn mode, and webhook.namespaceSelector.matchLabels. */}}
{{- define "pullsecret-injector.namespaceMatchLabels" -}}
{{- $selector := .Values.webhook.namespaceSelector }}
{{- $labels := dict }}
{{- if eq $selector.mode "optIn" }}
{{- $_ := set $labels $selector.optInLabel $selector.optInValue }}
{{- end }}
{{- with $selector.matchLabels }}
{{- $labels = merge $labels . }}
{{- end }}
{{- toYaml $labels }}
{{- end }}

{{/* The drain bound the binary uses after SIGTERM (limits.shutdownTimeoutSeconds, default 20). */}}
{{- define "pullsecret-injector.shutdownTimeoutSeconds" -}}
{{- dig "shutdownTimeoutSeconds" 20 .Values.limits | int }}
{{- end }}

{{/* Namespaces never selected, as a YAML list: a webhook that intercepts its own pods can
deadlock its own rollout, and the system namespaces are not ours to change. */}}
{{- define "pullsecret-injector.excludedNamespaces" -}}
{{- concat (list "kube-system" "kube-node-lease" .Release.Namespace) (.Values.webhook.namespaceSelector.excludeNamespaces | default list) | uniq | toYaml }}
{{- end }}

{{/* The copies' names (entries with a source or a provider), as a JSON list: with
retiredSecrets, the only Secret names the injector may read or write outside its own
namespace. A provider's credentials are kept under the same name in the release namespace. */}}
{{- define "pullsecret-injector.copyNames" -}}
{{- $names := list }}
{{- range .Values.secrets }}
{{- if or .source .provider }}
{{- $names = append $names .name }}
{{- end }}
{{- end }}
{{- $names | uniq | toJson }}
{{- end }}

{{/* Retired entries' names not in use again, as a JSON list: their copies may only be
found and deleted. */}}
{{- define "pullsecret-injector.retiredNames" -}}
{{- $live := include "pullsecret-injector.copyNames" . | fromJsonArray }}
{{- $names := list }}
{{- range .Values.retiredSecrets }}
{{- if not (has . $live) }}
{{- $names = append $names . }}
{{- end }}
{{- end }}
{{- $names | uniq | toJson }}
{{- end }}

{{/* Names of entries with a source or a provider and overwriteExisting, as a JSON list: a
same-named Secret the injector did not make may be replaced (updated, or deleted and
re-created). */}}
{{- define "pullsecret-injector.overwriteNames" -}}
{{- $names := list }}
{{- range .Values.secrets }}
{{- if and (or .source .provider) .overwriteExisting }}
{{- $names = append $names .name }}
{{- end }}
{{- end }}
{{- $names | uniq | toJson }}
{{- end }}

{{/* Source Secrets by namespace (the release's when not given), as a JSON object of lists. */}}
{{- define "pullsecret-injector.sourcesByNamespace" -}}
{{- $byNamespace := dict }}
{{- range .Values.secrets }}
{{- with .source }}
{{- $namespace := .namespace | default $.Release.Namespace }}
{{- $_ := set $byNamespace $namespace (append (get $byNamespace $namespace | default list) .name | uniq) }}
{{- end }}
{{- end }}
{{- $byNamespace | toJson }}
{{- end }}

{{/* What the installation writes into its copies' owner annotation: the Lease's
namespace/name (the binary's `owner`). */}}
{{- define "pullsecret-injector.owner" -}}
{{- printf "%s/%s" .Release.Namespace (include "pullsecret-injector.fullname" .) }}
{{- end }}

{{/* A CEL expression: the Secret `.object` (object or oldObject) is one the injector
manages, a labelled copy of this installation named one of `.names` (a CEL list variable) or
its certificate Secret. */}}
{{- define "pullsecret-injector.policy.managed" -}}
{{- $x := .object -}}
{{ $x }} != null
&& has({{ $x }}.type)
&& has({{ $x }}.metadata.labels)
&& "app.kubernetes.io/managed-by" in {{ $x }}.metadata.labels
&& {{ $x }}.metadata.labels["app.kubernetes.io/managed-by"] == "pullsecret-injector"
&& (
  (request.name in {{ .names }}
    && {{ $x }}.type == "kubernetes.io/dockerconfigjson"
    && has({{ $x }}.metadata.annotations)
    && "pullsecret-injector.io/owner" in {{ $x }}.metadata.annotations
    && {{ $x }}.metadata.annotations["pullsecret-injector.io/owner"] == variables.owner)
  || (variables.certificate && {{ $x }}.type == "kubernetes.io/tls")
)
{{- end }}

{{/*
"true" when the release runs credential provider plugins: credentialProviders.providers is
set. Fails on what would leave them unusable: an entry naming a provider without providers,
or providers without a way to put the plugins in the pod (or with two).
*/}}
{{- define "pullsecret-injector.credentialProviders" -}}
{{- $cp := .Values.credentialProviders }}
{{- range .Values.secrets }}
{{- if and .provider (not $cp.providers) }}
{{- fail (printf "secrets entry %s has a provider, but credentialProviders.providers is empty: list the kubelet CredentialProviderConfig's providers there" .name) }}
{{- end }}
{{- end }}
{{- if $cp.providers }}
{{- $init := $cp.initContainer.image }}
{{- $volume := $cp.imageVolume.reference }}
{{- if and (not $init) (not $volume) }}
{{- fail "credentialProviders.providers needs their plugins in the pod: set credentialProviders.initContainer.image (with its command) or credentialProviders.imageVolume.reference" }}
{{- end }}
{{- if and $init $volume }}
{{- fail "set either credentialProviders.initContainer.image or credentialProviders.imageVolume.reference, not both" }}
{{- end }}
{{- if and $init (not $cp.initContainer.command) }}
{{- fail "credentialProviders.initContainer.command must copy the plugins into /plugins (for example [cp, /ecr-credential-provider, /plugins/])" }}
{{- end }}
true
{{- end }}
{{- end }}

{{/* Where the kubelet CredentialProviderConfig is mounted (a key of the ConfigMap). */}}
{{- define "pullsecret-injector.credentialProvidersPath" -}}
/etc/pullsecret-injector/credential-providers.yaml
{{- end }}

{{/* Where the plugins are in the injector's container. */}}
{{- define "pullsecret-injector.pluginDir" -}}
/var/lib/pullsecret-injector/plugins
{{- end }}
