//! The configuration file: any text is parsed and validated or refused with a message,
//! never a panic; a refusal names at least one field.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pullsecret_injector::config::{Config, ConfigError};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::from_yaml(text) else {
        return;
    };
    match config.validate() {
        Ok(settings) => {
            let _ = settings.needs_cluster();
        }
        Err(error) => {
            if let ConfigError::Invalid(fields) = &error {
                assert!(!fields.is_empty(), "an invalid config names its fields");
            }
            assert!(!error.to_string().is_empty());
        }
    }
});
