//! Registry patterns and the keyring. Input: patterns separated by spaces on the first line,
//! images on the following lines, read as `auths` keys (as the kubelet reads them). Parsing
//! never panics, a pattern the config accepts reads the same as a key, and the keyring's
//! indexed lookup agrees with a plain scan of `matches_directly` over every pattern, the
//! Docker Hub fallback applying only when nothing matched directly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pullsecret_injector::image::ImageName;
use pullsecret_injector::matching::{Keyring, MatchKind, Pattern};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let patterns: Vec<Pattern> = lines
        .next()
        .unwrap_or_default()
        .split(' ')
        .filter_map(|raw| {
            let pattern = Pattern::from_auths_key(raw).ok()?;
            assert_eq!(pattern.raw(), raw);
            if let Ok(configured) = Pattern::parse(raw) {
                assert_eq!(configured, pattern, "config and auths readings of {raw:?}");
            }
            Some(pattern)
        })
        .collect();
    let keyring = Keyring::new(patterns.iter().cloned().enumerate());
    assert_eq!(keyring.len(), patterns.len());
    for image in lines.filter_map(|line| ImageName::parse(line).ok()) {
        let mut direct = Vec::new();
        let mut fallback = Vec::new();
        keyring.for_each_match(&image, |secret, pattern, kind| {
            assert_eq!(pattern, &patterns[secret]);
            match kind {
                MatchKind::Direct => direct.push(secret),
                MatchKind::DockerHubFallback => fallback.push(secret),
            }
            let _ = pattern.matches_mid_segment(&image);
        });
        direct.sort_unstable();
        let scanned: Vec<usize> = (0..patterns.len())
            .filter(|&i| patterns[i].matches_directly(&image))
            .collect();
        assert_eq!(direct, scanned, "direct matches of {image}");
        assert!(
            direct.is_empty() || fallback.is_empty(),
            "fallback used for {image} although a pattern matched directly"
        );
        assert!(
            fallback
                .iter()
                .all(|&i| patterns[i].is_docker_hub_fallback()),
            "fallback through a pattern that is not index.docker.io"
        );
    }
});
