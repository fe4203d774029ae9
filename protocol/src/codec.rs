//! The envelope: every message is a JSON object with the protocol version `v` and a
//! `type` tag beside the message's own fields, e.g.
//! `{"v":1,"type":"heartbeat","device_id":"gw-1","session_id":"…"}`.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// The version this build speaks. Messages with any other `v` are refused.
pub const PROTOCOL_VERSION: u32 = 1;

/// Why bytes off the wire are not a message this build understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not a JSON object with a protocol version \"v\": {0}")]
    NotAnEnvelope(String),
    #[error("unsupported protocol version {found} (this build speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion { found: u64 },
    #[error("malformed message: {0}")]
    Malformed(String),
}

impl DecodeError {
    /// A short, stable label for metrics (`reason="…"`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotAnEnvelope(_) => "not_an_envelope",
            Self::UnsupportedVersion { .. } => "unsupported_version",
            Self::Malformed(_) => "malformed",
        }
    }
}

#[derive(Serialize)]
struct Outgoing<'a, T> {
    v: u32,
    #[serde(flatten)]
    message: &'a T,
}

#[derive(Deserialize)]
struct VersionProbe {
    v: u64,
}

#[derive(Deserialize)]
struct Incoming<T> {
    #[serde(flatten)]
    message: T,
}

/// Serializes a message into its envelope.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    // Serializing these types cannot fail: they hold only strings, numbers, maps with
    // string keys and JSON values.
    serde_json::to_vec(&Outgoing {
        v: PROTOCOL_VERSION,
        message,
    })
    .expect("protocol messages always serialize")
}

/// Checks the envelope's version, then decodes the message inside it.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let probe: VersionProbe =
        serde_json::from_slice(bytes).map_err(|e| DecodeError::NotAnEnvelope(e.to_string()))?;
    if probe.v != u64::from(PROTOCOL_VERSION) {
        return Err(DecodeError::UnsupportedVersion { found: probe.v });
    }
    serde_json::from_slice::<Incoming<T>>(bytes)
        .map(|incoming| incoming.message)
        .map_err(|e| DecodeError::Malformed(e.to_string()))
}
