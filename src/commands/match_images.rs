//! `match`: for a person asking "why did my pod get (or not get) this secret": which
//! configured secret the kubelet would use for each image, and why; `-o json` for a script
//! asking the same.

use std::fmt::Write;

use serde::Serialize;

use super::{CommandError, Environment, keyring_with_sources, load_settings};
use crate::cli::{MatchArgs, ReportFormat};
use crate::config::Settings;
use crate::image::ImageName;
use crate::matching::{Keyring, MatchKind};

/// Prints the report; `Ok(false)` when an image matches no secret (exit code 1), unless
/// `--allow-unmatched`.
pub fn match_images(args: MatchArgs, environment: &Environment) -> Result<bool, CommandError> {
    let settings = load_settings(&args.config, environment, |_| {})?;
    let keyring = keyring_with_sources(&settings, args.kubeconfig.as_deref())?;
    let reports = reports(&settings, &keyring, &args.images);
    match args.output {
        ReportFormat::Text => print!("{}", render_text(&reports)),
        ReportFormat::Json => {
            let json =
                serde_json::to_string_pretty(&reports).map_err(|e| CommandError::Render {
                    what: "the report as JSON",
                    reason: e.to_string(),
                })?;
            println!("{json}");
        }
    }
    Ok(args.allow_unmatched || reports.iter().all(ImageReport::matched))
}

/// What `match` found for one image.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageReport {
    /// As given.
    pub image: String,
    /// As the kubelet reads it (`docker.io/library/nginx`); absent when it does not parse.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub normalized: Option<String>,
    /// Why it does not parse: the kubelet cannot pull it, so no secret applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The secrets the kubelet would use for it, in the order it tries them.
    pub secrets: Vec<SecretMatch>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretMatch {
    pub secret: String,
    /// The pattern as written (config or the source's `auths` key, redacted).
    pub pattern: String,
    /// The pattern as the keyring compares it.
    pub key: String,
    /// `direct`, or `dockerHubFallback` (no other pattern matches this Docker Hub image).
    pub how: &'static str,
    /// The pattern matches as a raw string prefix in the middle of a path segment
    /// (`ghcr.io/acme` for `ghcr.io/acme-labs/x`), as the kubelet does.
    pub mid_segment: bool,
}

impl ImageReport {
    pub fn matched(&self) -> bool {
        !self.secrets.is_empty()
    }
}

/// The report for each image, in order.
pub fn reports(settings: &Settings, keyring: &Keyring, images: &[String]) -> Vec<ImageReport> {
    images
        .iter()
        .map(|image| report(settings, keyring, image))
        .collect()
}

fn report(settings: &Settings, keyring: &Keyring, image: &str) -> ImageReport {
    let mut report = ImageReport {
        image: image.to_string(),
        normalized: None,
        error: None,
        secrets: Vec::new(),
    };
    let name = match ImageName::parse(image) {
        Ok(name) => name,
        Err(e) => {
            report.error = Some(e.to_string());
            return report;
        }
    };
    report.normalized = Some(name.to_string());
    // In the order the kubelet tries them.
    for found in keyring.lookup(&name) {
        let (pattern, kind) = (found.pattern, found.kind);
        report.secrets.push(SecretMatch {
            secret: settings.secrets[found.secret].name.clone(),
            pattern: pattern.shown().to_string(),
            key: pattern.key().to_string(),
            how: match kind {
                MatchKind::Direct => "direct",
                MatchKind::DockerHubFallback => "dockerHubFallback",
            },
            mid_segment: kind == MatchKind::Direct && pattern.matches_mid_segment(&name),
        });
    }
    report
}

/// A readable report, one block per image.
pub fn explain(settings: &Settings, keyring: &Keyring, images: &[String]) -> String {
    render_text(&reports(settings, keyring, images))
}

pub fn render_text(reports: &[ImageReport]) -> String {
    let mut out = String::new();
    for report in reports {
        render_one(report, &mut out);
    }
    out
}

fn render_one(report: &ImageReport, out: &mut String) {
    // Writing into a String cannot fail.
    let _ = writeln!(out, "{}", report.image);
    if let Some(error) = &report.error {
        let _ = writeln!(
            out,
            "  invalid image reference: {error}\n  the kubelet cannot pull it (InvalidImageName), so no secret applies"
        );
        return;
    }
    if let Some(normalized) = &report.normalized {
        let _ = writeln!(out, "  normalized: {normalized}");
    }
    for found in &report.secrets {
        let how = match found.how {
            "dockerHubFallback" => {
                "applies through the Docker Hub fallback (no other pattern matches this Docker Hub image)"
            }
            _ => "matches",
        };
        let _ = writeln!(
            out,
            "  secret {:?}: pattern {:?} (key {}) {how}",
            found.secret, found.pattern, found.key
        );
        if found.mid_segment {
            let _ = writeln!(
                out,
                "    note: {:?} matches as a raw string prefix, as the kubelet does; write {:?} to match only that path",
                found.pattern,
                format!("{}/", found.key)
            );
        }
    }
    if report.secrets.is_empty() {
        let _ = writeln!(out, "  no configured secret matches");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn settings() -> Settings {
        Config::from_yaml(
            r#"
secrets:
  - name: acme
    registries: [ghcr.io/acme]
  - name: hub
    registries: ["https://index.docker.io/v1/"]
"#,
        )
        .unwrap()
        .validate()
        .unwrap()
    }

    #[test]
    fn names_secret_pattern_and_how() {
        let out = explain(
            &settings(),
            &settings().keyring,
            &["ghcr.io/acme/app:1".into(), "nginx".into()],
        );
        assert!(out.contains("normalized: ghcr.io/acme/app"), "{out}");
        assert!(
            out.contains("secret \"acme\": pattern \"ghcr.io/acme\" (key ghcr.io/acme) matches"),
            "{out}"
        );
        assert!(out.contains("normalized: docker.io/library/nginx"), "{out}");
        assert!(out.contains("secret \"hub\": pattern \"https://index.docker.io/v1/\" (key index.docker.io) applies through the Docker Hub fallback"), "{out}");
    }

    #[test]
    fn lists_matches_in_the_order_the_kubelet_tries_them() {
        let settings = Config::from_yaml(
            "secrets: [{name: host, registries: [ghcr.io]}, {name: team, registries: [ghcr.io/acme/]}]",
        )
        .unwrap()
        .validate()
        .unwrap();
        let out = explain(&settings, &settings.keyring, &["ghcr.io/acme/app".into()]);
        let team = out.find("secret \"team\"").expect("team listed");
        let host = out.find("secret \"host\"").expect("host listed");
        assert!(
            team < host,
            "the longer key sorts first in the kubelet's index:\n{out}"
        );
    }

    #[test]
    fn warns_about_raw_prefix_matches() {
        let out = explain(
            &settings(),
            &settings().keyring,
            &["ghcr.io/acme-labs/x".into()],
        );
        assert!(
            out.contains("note: \"ghcr.io/acme\" matches as a raw string prefix"),
            "{out}"
        );
        assert!(out.contains("write \"ghcr.io/acme/\""), "{out}");
    }

    #[test]
    fn the_json_report_says_the_same() {
        let images: Vec<String> = ["ghcr.io/acme-labs/x", "nginx", "Nginx", "quay.io/x/y"]
            .map(String::from)
            .into();
        let found = reports(&settings(), &settings().keyring, &images);
        let json = serde_json::to_value(&found).expect("serializes");
        assert_eq!(
            json[0],
            serde_json::json!({
                "image": "ghcr.io/acme-labs/x",
                "normalized": "ghcr.io/acme-labs/x",
                "secrets": [{"secret": "acme", "pattern": "ghcr.io/acme", "key": "ghcr.io/acme",
                             "how": "direct", "midSegment": true}],
            })
        );
        assert_eq!(json[1]["secrets"][0]["how"], "dockerHubFallback");
        assert_eq!(json[1]["secrets"][0]["secret"], "hub");
        assert!(
            json[2]["error"].is_string() && json[2].get("normalized").is_none(),
            "{json}"
        );
        assert_eq!(json[3]["secrets"], serde_json::json!([]));
        assert_eq!(
            found.iter().map(ImageReport::matched).collect::<Vec<_>>(),
            [true, true, false, false]
        );
        assert_eq!(
            render_text(&found),
            explain(&settings(), &settings().keyring, &images)
        );
    }

    #[test]
    fn says_when_nothing_matches_or_the_image_is_invalid() {
        let out = explain(
            &settings(),
            &settings().keyring,
            &["quay.io/x/y".into(), "Nginx".into()],
        );
        assert!(
            out.contains("quay.io/x/y\n  normalized: quay.io/x/y\n  no configured secret matches"),
            "{out}"
        );
        assert!(out.contains("Nginx\n  invalid image reference"), "{out}");
    }
}
