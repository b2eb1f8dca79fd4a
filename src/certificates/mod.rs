//! Self-managed certificates (a `certificates` block in the config, the chart's
//! `certs.mode: self`): the injector keeps its own CA and serving certificate in a Secret.
//! `pair` is the pure part (generate, renew, read and write the Secret's data); `keeper` is
//! the cluster part (every replica follows the Secret; the leader keeps it and the webhook's
//! caBundle current).

pub mod keeper;
pub mod pair;
