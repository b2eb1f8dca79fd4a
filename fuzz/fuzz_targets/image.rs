//! Image references: any text either parses or is refused, never panics, and what parses is
//! a normalized name that parses to itself.
//! The checks are test_support::fuzz_checks::image, which tests/fuzz_regressions.rs also runs
//! on every input kept in fuzz/regressions/image/.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| test_support::fuzz_checks::image(data));
