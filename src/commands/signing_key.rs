//! `signing-key generate`: a new repository signing key pair (see `repo::signing`).

use std::path::Path;

/// Write the private key to `out` (0600) and print the verify key for the readers' configs.
pub fn generate(out: &Path) -> anyhow::Result<()> {
    let verify = crate::repo::signing::generate_key_file(out)?;
    println!("verify_key = \"{verify}\"");
    eprintln!(
        "wrote a new signing key to {} (mode 0600; keep it off the store): writers set \
         signing_key_file = \"{}\" in [repository], every reader sets the verify_key line above",
        out.display(),
        out.display()
    );
    Ok(())
}
