//! Artifacts: files an admin uploads for devices to install (software updates), kept by
//! the server with their SHA-256 and size, signed with the server's update key, and
//! served to devices over HTTP (with `Range`, so a download cut half way resumes) under
//! a short-lived token per device and update.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An artifact's identity, chosen by the server that stored it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct ArtifactId(pub String);

impl fmt::Display for ArtifactId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The architectures an artifact may be built for; `any` for one that runs everywhere
/// (a script, a configuration).
pub const ARCHITECTURES: [&str; 4] = ["x86_64", "aarch64", "armv7", "any"];

/// The longest name and version.
pub const MAX_NAME: usize = 100;

/// `POST /api/v1/artifacts?name=&version=&arch=`, the file as the body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema, utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct NewArtifact {
    pub name: String,
    pub version: String,
    pub arch: String,
}

impl NewArtifact {
    /// A message for people when a field is out of bounds.
    pub fn check(&self) -> Result<(), String> {
        for (field, value) in [("name", &self.name), ("version", &self.version)] {
            if value.trim().is_empty() {
                return Err(format!("the {field} is missing"));
            }
            if value.chars().count() > MAX_NAME {
                return Err(format!("the {field} may be at most {MAX_NAME} characters"));
            }
            if value.chars().any(char::is_control) {
                return Err(format!("the {field} may not hold control characters"));
            }
        }
        if !ARCHITECTURES.contains(&self.arch.as_str()) {
            return Err(format!(
                "the architecture must be one of {}",
                ARCHITECTURES.join(", ")
            ));
        }
        Ok(())
    }
}

/// An artifact as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ArtifactView {
    pub id: ArtifactId,
    pub name: String,
    pub version: String,
    pub arch: String,
    /// The file's SHA-256, lowercase hex.
    pub sha256: String,
    /// The file's size in bytes.
    pub size: u64,
    /// The server's ed25519 signature of the file's SHA-256 digest (the 32 bytes), hex;
    /// agents configured with the server's public key refuse a file it does not verify.
    pub signature: String,
    pub created_by: String,
    pub created_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_out_of_bounds_are_refused() {
        let ok = NewArtifact {
            name: "tether-agent".into(),
            version: "1.2.0".into(),
            arch: "aarch64".into(),
        };
        assert!(ok.check().is_ok());
        let mut arch = ok.clone();
        arch.arch = "mips".into();
        assert!(arch.check().is_err());
        let mut empty = ok.clone();
        empty.version = " ".into();
        assert!(empty.check().is_err());
        let mut long = ok;
        long.name = "x".repeat(101);
        assert!(long.check().is_err());
    }
}
