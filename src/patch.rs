//! The JSON patch that appends pull secrets to a pod spec: pure, no I/O.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::LocalObjectReference;
use serde_json::{Value, json};

/// A patch and the names it adds, in the order it adds them.
#[derive(Debug, Clone, PartialEq)]
pub struct PullSecretPatch {
    pub patch: Patch,
    pub added: Vec<String>,
}

/// Appends every name of `wanted` that `existing` lacks, keeping existing entries and their
/// order. `spec` points at the PodSpec (`/spec` for a Pod, `/spec/template/spec` for a
/// Deployment). Returns `None` when nothing is missing, so the caller sends no patch.
///
/// Pod JSON omits empty lists, so a pod without the field gets one `add` of the whole array;
/// appending with `/-` to a missing array would fail and fail the pod's creation.
pub fn append_pull_secrets<'a>(
    spec: &[&str],
    existing: Option<&[LocalObjectReference]>,
    wanted: impl IntoIterator<Item = &'a str>,
) -> Option<PullSecretPatch> {
    let mut added: Vec<String> = Vec::new();
    for name in wanted {
        let present = existing.is_some_and(|e| e.iter().any(|r| r.name == name));
        if !present && !added.iter().any(|a| a == name) {
            added.push(name.to_string());
        }
    }
    if added.is_empty() {
        return None;
    }
    let field = spec.iter().copied().chain(["imagePullSecrets"]);
    let operations = match existing {
        None => vec![add(
            PointerBuf::from_tokens(field),
            Value::Array(added.iter().map(|n| json!({ "name": n })).collect()),
        )],
        Some(_) => added
            .iter()
            .map(|n| {
                add(
                    PointerBuf::from_tokens(field.clone().chain(["-"])),
                    json!({ "name": n }),
                )
            })
            .collect(),
    };
    Some(PullSecretPatch {
        patch: Patch(operations),
        added,
    })
}

fn add(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(names: &[&str]) -> Vec<LocalObjectReference> {
        names
            .iter()
            .map(|n| LocalObjectReference {
                name: n.to_string(),
            })
            .collect()
    }

    fn apply(doc: &Value, patch: &Patch) -> Value {
        let mut doc = doc.clone();
        json_patch::patch(&mut doc, patch).expect("patch applies");
        doc
    }

    #[test]
    fn absent_list_gets_one_whole_array_add() {
        let p = append_pull_secrets(&["spec"], None, ["a", "b"]).unwrap();
        assert_eq!(
            serde_json::to_value(&p.patch).unwrap(),
            json!([{"op": "add", "path": "/spec/imagePullSecrets", "value": [{"name": "a"}, {"name": "b"}]}])
        );
        assert_eq!(p.added, ["a", "b"]);
    }

    #[test]
    fn existing_list_gets_one_append_per_missing_name_and_keeps_its_order() {
        let existing = refs(&["z", "a"]);
        let p = append_pull_secrets(&["spec"], Some(&existing), ["a", "b", "c"]).unwrap();
        assert_eq!(p.added, ["b", "c"]);
        let pod = json!({"spec": {"imagePullSecrets": [{"name": "z"}, {"name": "a"}]}});
        assert_eq!(
            apply(&pod, &p.patch)["spec"]["imagePullSecrets"],
            json!([{"name": "z"}, {"name": "a"}, {"name": "b"}, {"name": "c"}])
        );
    }

    #[test]
    fn nothing_missing_means_no_patch() {
        let existing = refs(&["a"]);
        assert_eq!(append_pull_secrets(&["spec"], Some(&existing), ["a"]), None);
        assert_eq!(append_pull_secrets(&["spec"], None, []), None);
    }

    #[test]
    fn a_name_is_never_added_twice() {
        let p = append_pull_secrets(&["spec"], None, ["a", "a"]).unwrap();
        assert_eq!(p.added, ["a"]);
    }

    #[test]
    fn applying_twice_adds_nothing_the_second_time() {
        let pod = json!({"spec": {"containers": []}});
        let first = append_pull_secrets(&["spec"], None, ["a", "b"]).unwrap();
        let once = apply(&pod, &first.patch);
        let spec: k8s_openapi::api::core::v1::PodSpec =
            serde_json::from_value(once["spec"].clone()).unwrap();
        assert_eq!(
            append_pull_secrets(&["spec"], spec.image_pull_secrets.as_deref(), ["a", "b"]),
            None
        );
    }

    #[test]
    fn template_specs_are_addressed_by_their_pointer() {
        let p = append_pull_secrets(&["spec", "template", "spec"], None, ["a"]).unwrap();
        let doc = json!({"spec": {"template": {"spec": {"containers": []}}}});
        assert_eq!(
            apply(&doc, &p.patch)["spec"]["template"]["spec"]["imagePullSecrets"],
            json!([{"name": "a"}])
        );
    }
}
