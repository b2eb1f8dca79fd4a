//! A MutatingWebhookConfiguration for Pods CREATE in opted-in namespaces, registered for one
//! test and deleted at its end (or, if the test panics, on drop).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{Api, DeleteParams, PostParams};

use crate::controlplane;

/// What varies between the tests' configurations. The rest is fixed: a single webhook for
/// Pods CREATE, admissionReviewVersions v1.
pub struct Spec<'a> {
    /// The configuration's name.
    pub name: &'a str,
    /// The name of its webhook, as the apiserver's errors and logs call it.
    pub webhook: &'a str,
    pub url: &'a str,
    /// The caBundle; `None` leaves it to the injector (a `certificates` block: self-managed).
    pub ca_pem: Option<&'a str>,
    pub failure_policy: &'a str,
    pub side_effects: &'a str,
    pub reinvocation_policy: Option<&'a str>,
    /// Only namespaces labelled `<opt_in_label>=enabled` are sent to the webhook.
    pub opt_in_label: &'a str,
    pub timeout_seconds: i32,
}

impl<'a> Spec<'a> {
    /// No caBundle, failurePolicy Fail, sideEffects None, reinvocationPolicy IfNeeded,
    /// timeoutSeconds 5.
    pub fn new(name: &'a str, webhook: &'a str, url: &'a str, opt_in_label: &'a str) -> Self {
        Self {
            name,
            webhook,
            url,
            ca_pem: None,
            failure_policy: "Fail",
            side_effects: "None",
            reinvocation_policy: Some("IfNeeded"),
            opt_in_label,
            timeout_seconds: 5,
        }
    }

    pub fn configuration(&self) -> MutatingWebhookConfiguration {
        MutatingWebhookConfiguration {
            metadata: ObjectMeta {
                name: Some(self.name.into()),
                ..ObjectMeta::default()
            },
            webhooks: Some(vec![MutatingWebhook {
                name: self.webhook.into(),
                admission_review_versions: vec!["v1".into()],
                side_effects: self.side_effects.into(),
                failure_policy: Some(self.failure_policy.into()),
                timeout_seconds: Some(self.timeout_seconds),
                reinvocation_policy: self.reinvocation_policy.map(String::from),
                client_config: WebhookClientConfig {
                    url: Some(self.url.into()),
                    ca_bundle: self.ca_pem.map(|pem| ByteString(pem.as_bytes().to_vec())),
                    ..WebhookClientConfig::default()
                },
                rules: Some(vec![RuleWithOperations {
                    operations: Some(vec!["CREATE".into()]),
                    api_groups: Some(vec!["".into()]),
                    api_versions: Some(vec!["v1".into()]),
                    resources: Some(vec!["pods".into()]),
                    scope: Some("Namespaced".into()),
                }]),
                namespace_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        self.opt_in_label.to_string(),
                        "enabled".to_string(),
                    )])),
                    ..LabelSelector::default()
                }),
                ..MutatingWebhook::default()
            }]),
        }
    }
}

/// The configuration of an injector that replicates, registered as `name` (its webhook
/// `<name>.pullsecret-injector.io`) for namespaces labelled `label=enabled`, trusting
/// `ca_pem`: sideEffects NoneOnDryRun, since admission creates a missing copy except for dry
/// runs.
pub fn replicating(
    name: &str,
    label: &str,
    url: &str,
    ca_pem: &str,
    timeout_seconds: i32,
) -> MutatingWebhookConfiguration {
    Spec {
        ca_pem: Some(ca_pem),
        side_effects: "NoneOnDryRun",
        timeout_seconds,
        ..Spec::new(name, &format!("{name}.pullsecret-injector.io"), url, label)
    }
    .configuration()
}

/// A registered webhook configuration. `delete` removes it at the end of a test; if the test
/// panics first (or does not call it), dropping it removes it from a helper thread.
pub struct Registration {
    pub api: Api<MutatingWebhookConfiguration>,
    pub name: String,
    deleted: bool,
}

pub async fn register(
    client: &kube::Client,
    configuration: &MutatingWebhookConfiguration,
) -> Registration {
    let api = Api::<MutatingWebhookConfiguration>::all(client.clone());
    let created = api
        .create(&PostParams::default(), configuration)
        .await
        .unwrap_or_else(|e| panic!("creating MutatingWebhookConfiguration: {e}"));
    Registration {
        api,
        name: created.metadata.name.expect("name"),
        deleted: false,
    }
}

impl Registration {
    /// Changes the failure policy of the (only) webhook.
    pub async fn set_failure_policy(&self, policy: &str) {
        let mut current = self
            .api
            .get(&self.name)
            .await
            .expect("get webhook configuration");
        for hook in current.webhooks.iter_mut().flatten() {
            hook.failure_policy = Some(policy.into());
        }
        self.api
            .replace(&self.name, &PostParams::default(), &current)
            .await
            .expect("replace webhook configuration");
    }

    pub async fn delete(mut self) {
        self.api
            .delete(&self.name, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("deleting MutatingWebhookConfiguration {}: {e}", self.name));
        assert!(self.api.get_opt(&self.name).await.expect("get").is_none());
        self.deleted = true;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.deleted {
            return;
        }
        let name = self.name.clone();
        controlplane::cleanup(move |client| async move {
            let api = Api::<MutatingWebhookConfiguration>::all(client);
            let params = DeleteParams::default();
            let _ = tokio::time::timeout(Duration::from_secs(10), api.delete(&name, &params)).await;
        });
    }
}
