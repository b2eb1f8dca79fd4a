//! `match`: for a person asking "why did my pod get (or not get) this secret": which
//! configured secret the kubelet would use for each image, and why.

use std::fmt::Write;

use super::{CommandError, Environment, keyring_with_sources, load_settings};
use crate::cli::MatchArgs;
use crate::config::Settings;
use crate::image::ImageName;
use crate::matching::{Keyring, MatchKind};

pub fn match_images(args: MatchArgs, environment: &Environment) -> Result<(), CommandError> {
    let settings = load_settings(&args.config, environment, |_| {})?;
    let keyring = keyring_with_sources(&settings, args.kubeconfig.as_deref())?;
    print!("{}", explain(&settings, &keyring, &args.images));
    Ok(())
}

/// A readable report, one block per image.
pub fn explain(settings: &Settings, keyring: &Keyring, images: &[String]) -> String {
    let mut out = String::new();
    for image in images {
        explain_one(settings, keyring, image, &mut out);
    }
    out
}

fn explain_one(settings: &Settings, keyring: &Keyring, image: &str, out: &mut String) {
    // Writing into a String cannot fail.
    let _ = writeln!(out, "{image}");
    let name = match ImageName::parse(image) {
        Ok(name) => name,
        Err(e) => {
            let _ = writeln!(
                out,
                "  invalid image reference: {e}\n  the kubelet cannot pull it (InvalidImageName), so no secret applies"
            );
            return;
        }
    };
    let _ = writeln!(out, "  normalized: {name}");
    // In the order the kubelet tries them.
    let matches = keyring.lookup(&name);
    let matched = !matches.is_empty();
    for found in matches {
        let (pattern, kind) = (found.pattern, found.kind);
        let how = match kind {
            MatchKind::Direct => "matches",
            MatchKind::DockerHubFallback => {
                "applies through the Docker Hub fallback (no other pattern matches this Docker Hub image)"
            }
        };
        let _ = writeln!(
            out,
            "  secret {:?}: pattern {:?} (key {}) {how}",
            settings.secrets[found.secret].name,
            pattern.shown(),
            pattern.key()
        );
        if kind == MatchKind::Direct && pattern.matches_mid_segment(&name) {
            let _ = writeln!(
                out,
                "    note: {:?} matches as a raw string prefix, as the kubelet does; write {:?} to match only that path",
                pattern.shown(),
                format!("{}/", pattern.key())
            );
        }
    }
    if !matched {
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
