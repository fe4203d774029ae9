//! The contract on the wire between devices, servers and browsers.
//!
//! Serde types and names only: no tokio, no lapin, so it compiles for wasm32 too.
