//! `mutate`: a manifest in, the same manifest out with the pull secrets the webhook would
//! add (or only the patches).

use std::io::{Read, Write};

use super::{CommandError, keyring_with_sources, load_settings};
use crate::cli::{MutateArgs, OutputFormat};
use crate::preview;

pub fn mutate(args: MutateArgs) -> Result<(), CommandError> {
    let settings = load_settings(&args.config, |_| {})?;
    let text = if args.file == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CommandError::Usage(format!("reading standard input: {e}")))?;
        text
    } else {
        std::fs::read_to_string(&args.file)
            .map_err(|e| CommandError::Usage(format!("reading {}: {e}", args.file)))?
    };
    let keyring = keyring_with_sources(&settings, args.kubeconfig.as_deref())?;
    let previews = preview::preview_text(&settings, &keyring, &text)
        .map_err(|e| CommandError::Usage(e.to_string()))?;
    let mut out = String::new();
    for (i, previewed) in previews.iter().enumerate() {
        let rendered = match args.output {
            OutputFormat::Yaml => {
                let yaml = serde_saphyr::to_string(&previewed.document).map_err(|e| {
                    CommandError::Render {
                        what: "YAML",
                        reason: e.to_string(),
                    }
                })?;
                if i > 0 {
                    out.push_str("---\n");
                }
                yaml
            }
            OutputFormat::Json => {
                serde_json::to_string_pretty(&previewed.document).map_err(|e| {
                    CommandError::Render {
                        what: "JSON",
                        reason: e.to_string(),
                    }
                })? + "\n"
            }
            OutputFormat::Patch => {
                serde_json::to_string(&previewed.patch).map_err(|e| CommandError::Render {
                    what: "the patch",
                    reason: e.to_string(),
                })? + "\n"
            }
        };
        out.push_str(&rendered);
    }
    std::io::stdout()
        .write_all(out.as_bytes())
        .map_err(CommandError::io("writing standard output"))
}
