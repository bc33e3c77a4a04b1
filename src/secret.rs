//! Where a secret comes from: inline (from the environment, usually) or a
//! file that is re-read when it changes. A leaf: it knows no other module,
//! and its `Debug` never shows an inline value.

use std::path::PathBuf;

use secrecy::SecretString;

/// Where a secret comes from. A file is re-read at run time when it changes.
#[derive(Clone)]
pub enum SecretSource {
    Inline(SecretString),
    File(PathBuf),
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Inline(_) => f.write_str("SecretSource::Inline([redacted])"),
            Self::File(p) => write!(f, "SecretSource::File({})", p.display()),
        }
    }
}

impl SecretSource {
    /// The current value: trimmed file content or the inline value.
    pub fn read(&self) -> Result<SecretString, std::io::Error> {
        match self {
            Self::Inline(s) => Ok(s.clone()),
            Self::File(p) => {
                let text = std::fs::read_to_string(p)?;
                let trimmed = text.trim();
                if trimmed.is_empty() {
                    return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "file is empty"));
                }
                Ok(SecretString::from(trimmed.to_owned()))
            }
        }
    }
}
