//! Shared harness code for the integration and end-to-end suites. Each test binary uses a
//! part of it, so unused items are expected.
#![allow(dead_code)]

pub mod access;
pub mod client;
pub mod controlplane;
pub mod injector;
pub mod pki;
pub mod pods;
pub mod scenario;
pub mod secrets;
pub mod webhook;
