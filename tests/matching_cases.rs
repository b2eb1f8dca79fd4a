//! Every row of the registry-matching specification (`tests/fixtures/matching-cases.tsv`,
//! copied from the shared specification) checked against the matcher: the pattern read as a
//! source Secret's `auths` key, and as a config pattern unless the row says the config
//! refuses it. tests/kubelet_oracle.rs checks the same rows against the kubelet's code.

use pullsecret_injector::image::ImageName;
use pullsecret_injector::matching::{Keyring, MatchKind, Pattern};
use test_support::matching_cases::{Case, TABLE, cases};

#[test]
fn every_row_of_the_specification_holds() {
    let cases = cases();
    let rows = TABLE
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .count();
    assert!(
        rows >= 74 && cases.len() == rows,
        "parsed {} of {rows} rows",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let want = (case.expected.to_string(), case.normalized.to_string());
        let as_key = Pattern::from_auths_key(case.pattern).ok();
        let configured = Pattern::parse(case.pattern);
        let mut readings = vec![("as an auths key", as_key)];
        match (&configured, case.refused) {
            (Ok(pattern), false) => readings.push(("in the config", Some(pattern.clone()))),
            (Err(_), true) => {}
            (Ok(_), true) => failures.push(format!(
                "line {}: the config should refuse pattern {:?}",
                case.line, case.pattern
            )),
            (Err(e), false) => failures.push(format!(
                "line {}: the config refuses pattern {:?}: {e}",
                case.line, case.pattern
            )),
        }
        for (how, pattern) in readings {
            let got = outcome(case, pattern);
            if got != want {
                failures.push(format!(
                    "line {}: image {:?} pattern {:?} {how}: want {:?}, got {:?} ({})",
                    case.line, case.image, case.pattern, want, got, case.note
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} rows fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// (expected, normalized) as the table spells them; a key the kubelet ignores (`None`) is
/// used for nothing.
fn outcome(case: &Case, pattern: Option<Pattern>) -> (String, String) {
    let image = match ImageName::parse(case.image) {
        Ok(image) => image,
        Err(_) => return ("invalid".into(), "-".into()),
    };
    let keyring = Keyring::new(pattern.map(|p| (0, p)));
    let mut kinds = Vec::new();
    keyring.for_each_match(&image, |_, _, kind| kinds.push(kind));
    let expected = match kinds.as_slice() {
        [] => "no",
        [MatchKind::Direct] => "yes",
        [MatchKind::DockerHubFallback] => "fallback",
        other => panic!(
            "line {}: one pattern matched {} times",
            case.line,
            other.len()
        ),
    };
    (expected.to_string(), image.to_string())
}
