//! The whole request handler, bytes in, response out, through the pure core and through the
//! axum router: the same answer, always allowed, a patch that applies and adds only what is
//! configured.
//! The checks are test_support::fuzz_checks::handler, which tests/fuzz_regressions.rs also runs
//! on every input kept in fuzz/regressions/handler/.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| test_support::fuzz_checks::handler(data));
