//! The configuration file: parsed and validated or refused with a message naming a field,
//! never a panic.
//! The checks are test_support::fuzz_checks::config, which tests/fuzz_regressions.rs also runs
//! on every input kept in fuzz/regressions/config/.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| test_support::fuzz_checks::config(data));
