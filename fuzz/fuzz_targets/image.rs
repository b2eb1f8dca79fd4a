//! Image references: any text either parses or is refused, never panics, and what parses is
//! a normalized name that parses to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pullsecret_injector::image::ImageName;

fuzz_target!(|data: &[u8]| {
    let Ok(reference) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(name) = ImageName::parse(reference) else {
        return;
    };
    assert_eq!(format!("{}/{}", name.domain(), name.path()), name.as_str());
    // distribution/reference limits the repository path (all of a domain-less name).
    assert!(name.path().len() <= 255, "over the path limit: {name}");
    let again = ImageName::parse(name.as_str())
        .unwrap_or_else(|e| panic!("normalized {name} of {reference:?} does not parse: {e}"));
    assert_eq!(again, name, "normalizing {reference:?} twice");
});
