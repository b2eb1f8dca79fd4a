//! The registry-matching specification, `tests/fixtures/matching-cases.tsv`, as rows: what
//! the matching suite checks and the peers comparison replays.

/// The table itself.
pub const TABLE: &str = include_str!("../../../tests/fixtures/matching-cases.tsv");

/// One row: an image, a pattern, whether the kubelet uses the pattern's secret for it
/// (`yes`, `no`, `fallback`, or `invalid` when the image does not parse), the normalized
/// image (`-` when invalid), a note, and `refused` when the config refuses the pattern.
pub struct Case {
    /// 1-based line in the file.
    pub line: usize,
    pub image: &'static str,
    pub pattern: &'static str,
    pub expected: &'static str,
    pub normalized: &'static str,
    pub note: &'static str,
    /// The config refuses the pattern (sixth column `refused`); `expected` is still the
    /// kubelet's answer for it as a source Secret's `auths` key.
    pub refused: bool,
}

/// The rows of [`TABLE`] (comments and blank lines skipped). Panics on a row with fewer than
/// four tab-separated fields.
pub fn cases() -> Vec<Case> {
    TABLE
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
