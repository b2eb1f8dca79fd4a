//! Registry patterns and the keyring: parsing never panics, and the indexed lookup agrees
//! with a plain scan of every pattern (the Docker Hub fallback only when nothing matched).
//! The checks are test_support::fuzz_checks::pattern, which tests/fuzz_regressions.rs also runs
//! on every input kept in fuzz/regressions/pattern/.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| test_support::fuzz_checks::pattern(data));
