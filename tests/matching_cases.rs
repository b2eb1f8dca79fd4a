//! Every row of the registry-matching specification (`tests/fixtures/matching-cases.tsv`,
//! copied from the shared specification) checked against the matcher: the pattern read as a
//! source Secret's `auths` key, and as a config pattern unless the row says the config
//! refuses it. tests/kubelet_oracle.rs checks the same rows against the kubelet's code.

use pullsecret_injector::image::ImageName;
use pullsecret_injector::matching::{Keyring, MatchKind, Pattern};

const CASES: &str = include_str!("fixtures/matching-cases.tsv");

struct Case<'a> {
    line: usize,
    image: &'a str,
    pattern: &'a str,
    expected: &'a str,
    normalized: &'a str,
    note: &'a str,
    /// The config refuses the pattern (sixth column `refused`).
    refused: bool,
}

fn cases() -> Vec<Case<'static>> {
    CASES
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.starts_with('#') && !l.trim().is_empty())
        .map(|(i, l)| {
            let f: Vec<&str> = l.split('\t').collect();
            assert!(
                f.len() >= 4,
                "line {}: expected at least 4 tab-separated fields",
                i + 1
            );
            Case {
                line: i + 1,
                image: f[0],
                pattern: f[1],
                expected: f[2],
                normalized: f[3],
                note: f.get(4).copied().unwrap_or_default(),
                refused: match f.get(5).copied() {
                    None | Some("") => false,
                    Some("refused") => true,
                    Some(other) => panic!("line {}: unknown sixth column {other:?}", i + 1),
                },
            }
        })
        .collect()
}

#[test]
fn every_row_of_the_specification_holds() {
    let cases = cases();
    let rows = CASES
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
fn outcome(case: &Case<'_>, pattern: Option<Pattern>) -> (String, String) {
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
