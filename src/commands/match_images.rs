//! `match`: which configured secret the kubelet would use for each image, and why.

use super::{CommandError, keyring_with_sources, load_settings};
use crate::cli::MatchArgs;
use crate::explain;

pub fn match_images(args: MatchArgs) -> Result<(), CommandError> {
    let settings = load_settings(&args.config, |_| {})?;
    let keyring = keyring_with_sources(&settings, args.kubeconfig.as_deref())?;
    print!("{}", explain::explain(&settings, &keyring, &args.images));
    Ok(())
}
