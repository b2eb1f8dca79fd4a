//! Every row of the registry-matching specification (`tests/fixtures/matching-cases.tsv`,
//! copied from the shared specification) checked against the matcher.

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
        rows >= 57 && cases.len() == rows,
        "parsed {} of {rows} rows",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let got = outcome(case);
        let want = (case.expected.to_string(), case.normalized.to_string());
        if got != want {
            failures.push(format!(
                "line {}: image {:?} pattern {:?}: want {:?}, got {:?} ({})",
                case.line, case.image, case.pattern, want, got, case.note
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} rows fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// (expected, normalized) as the table spells them.
fn outcome(case: &Case) -> (String, String) {
    let image = match ImageName::parse(case.image) {
        Ok(image) => image,
        Err(_) => return ("invalid".into(), "-".into()),
    };
    let pattern = Pattern::parse(case.pattern).unwrap_or_else(|e| {
        panic!(
            "line {}: pattern {:?} must parse: {e}",
            case.line, case.pattern
        )
    });
    let keyring = Keyring::new([(0, pattern)]);
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
