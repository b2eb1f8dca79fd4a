//! Which namespaces an entry serves: the installation's opt-in selector and exclusions, then
//! the entry's own. The webhook's opt-in is the apiserver's job (the chart's
//! namespaceSelector); replication applies the same selector itself.

use std::collections::BTreeMap;

use kube::core::SelectorExt;

use super::{SecretSpec, Settings};

/// The namespace label that opts a namespace in, as the chart's webhook selects it.
pub const DEFAULT_OPT_IN_LABEL: &str = "pullsecret-injector.io/inject-pull-secrets";
pub const DEFAULT_OPT_IN_VALUE: &str = "enabled";

impl SecretSpec {
    /// Whether this entry applies to a namespace with these labels (its own selector and
    /// exclusions only; the webhook's opt-in is the apiserver's and the replicator's job).
    pub fn applies_to(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        !self.exclude_namespaces.iter().any(|n| n == namespace)
            && self
                .namespace_selector
                .as_ref()
                .is_none_or(|s| s.matches(labels))
    }
}

impl Settings {
    /// Whether a pod's decision depends on its namespace's labels: some entry is narrowed
    /// by a namespace selector.
    pub fn decides_by_namespace_labels(&self) -> bool {
        self.secrets.iter().any(|s| s.namespace_selector.is_some())
    }

    /// Whether replicated copies belong in this namespace for `secret`.
    pub fn replicates_into(
        &self,
        secret: &SecretSpec,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> bool {
        secret
            .source
            .as_ref()
            .is_some_and(|source| source.namespace != namespace || source.name != secret.name)
            && !self.exclude_namespaces.iter().any(|n| n == namespace)
            && self.namespace_selector.matches(labels)
            && secret.applies_to(namespace, labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::validate::tests::settings;

    #[test]
    fn only_an_entry_narrowed_by_a_namespace_selector_makes_the_decision_read_labels() {
        let plain = settings(
            r#"
namespaceSelector: {matchLabels: {team: "yes"}}
excludeNamespaces: [legacy]
secrets:
  - name: regcred
    registries: [ghcr.io]
    excludeNamespaces: [prod-old]
"#,
        )
        .unwrap();
        assert!(!plain.decides_by_namespace_labels());
        let narrowed = settings(
            r#"
secrets:
  - name: regcred
    registries: [ghcr.io]
  - name: prod
    registries: [quay.io]
    namespaceSelector: {matchLabels: {tier: prod}}
"#,
        )
        .unwrap();
        assert!(narrowed.decides_by_namespace_labels());
    }

    #[test]
    fn replication_follows_the_opt_in_selector_the_entry_selector_and_exclusions() {
        let s = settings(
            r#"
namespace: infra
namespaceSelector: {matchLabels: {team: "yes"}}
excludeNamespaces: [legacy]
secrets:
  - name: regcred
    source: {name: src}
    namespaceSelector:
      matchExpressions: [{key: tier, operator: In, values: [prod]}]
    excludeNamespaces: [prod-old]
  - name: src
    source: {name: src}
"#,
        )
        .unwrap();
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        let entry = &s.secrets[0];
        assert!(s.replicates_into(entry, "app", &labels(&[("team", "yes"), ("tier", "prod")])));
        assert!(
            !s.replicates_into(entry, "app", &labels(&[("tier", "prod")])),
            "not opted in"
        );
        assert!(
            !s.replicates_into(entry, "app", &labels(&[("team", "yes"), ("tier", "dev")])),
            "entry selector"
        );
        assert!(
            !s.replicates_into(
                entry,
                "legacy",
                &labels(&[("team", "yes"), ("tier", "prod")])
            ),
            "global exclusion"
        );
        assert!(
            !s.replicates_into(
                entry,
                "prod-old",
                &labels(&[("team", "yes"), ("tier", "prod")])
            ),
            "entry exclusion"
        );
        // A copy never replaces its own source.
        assert!(!s.replicates_into(&s.secrets[1], "infra", &labels(&[("team", "yes")])));
    }

    #[test]
    fn the_default_opt_in_selector_is_the_charts_label() {
        let s = settings("secrets: [{name: a, source: {name: b}}]").unwrap();
        let on = BTreeMap::from([(
            DEFAULT_OPT_IN_LABEL.to_string(),
            DEFAULT_OPT_IN_VALUE.to_string(),
        )]);
        assert!(s.replicates_into(&s.secrets[0], "app", &on));
        assert!(!s.replicates_into(&s.secrets[0], "app", &Default::default()));
    }
}
