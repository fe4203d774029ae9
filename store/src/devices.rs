//! Device credentials: which devices may connect to the broker, and the secret each
//! one connects with (as its AMQP user name and password).
//!
//! A device is provisioned once by an admin, who is shown its secret that one time:
//! 24 random bytes from the operating system, in hex. Only the secret's argon2id hash
//! is kept, as for users' passwords (`accounts/password.rs`), so a copy of the database
//! lets no device in. The secret travels as a password does (AMQP's PLAIN), and an
//! argon2 check costs the same whatever the secret, so one scheme serves both.
//! Rotating replaces the hash (the old secret stops working at once); revoking deletes
//! the row.
//!
//! One row per device, `device_credentials (device_id, secret_hash, created_ms,
//! rotated_ms)`, and every change one statement (see `sql`). [`Store::check_device_secret`]
//! is what the broker asks when a device logs in.

use std::{
    collections::HashMap,
    sync::{Mutex, OnceLock},
};

use anyhow::Context as _;
use protocol::{auth::ProvisionedDevice, names::DeviceId};
use sha2::{Digest as _, Sha256};

use crate::{
    AccountError, Store,
    accounts::{
        password::{hash_password, verify_password},
        random_bytes,
    },
    now_ms,
    sql::{Row, Value},
};

pub(crate) const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS device_credentials (
        device_id TEXT PRIMARY KEY,
        secret_hash TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        rotated_ms BIGINT
    );
";

/// Random bytes in a device's secret: 192 bits, hex-encoded to 48 characters that need
/// no escaping in a URL.
const SECRET_BYTES: usize = 24;
/// Longer than any secret handed out: anything longer is refused without hashing, so
/// that no login attempt has the server hash megabytes.
const MAX_SECRET_BYTES: usize = 1024;

impl Store {
    /// Allows a device to connect: makes its secret, stores the secret's hash, and
    /// gives the secret, which is not kept anywhere and cannot be shown again.
    pub async fn provision_device(&self, id: &str) -> Result<String, AccountError> {
        DeviceId::new(id).map_err(|error| AccountError::Invalid(error.to_string()))?;
        let taken = || AccountError::Exists(format!("the device {id:?} is already provisioned"));
        // Spares hashing for a device that is obviously there; the insert below decides.
        if self.credential_row(id).await?.is_some() {
            return Err(taken());
        }
        let (secret, hash) = new_secret().await?;
        let inserted = self
            .execute(
                "INSERT INTO device_credentials (device_id, secret_hash, created_ms, rotated_ms)
                 VALUES ($1, $2, $3, NULL) ON CONFLICT DO NOTHING",
                vec![id.into(), hash.into(), Value::Int(now_ms())],
            )
            .await
            .with_context(|| format!("cannot provision the device {id:?}"))?;
        if inserted == 0 {
            return Err(taken());
        }
        Ok(secret)
    }

    /// Gives a provisioned device a new secret; the old one stops working at once
    /// (connections already open are the broker's to close). Gives the new secret,
    /// shown this once.
    pub async fn rotate_device_secret(&self, id: &str) -> Result<String, AccountError> {
        if self.credential_row(id).await?.is_none() {
            return Err(not_provisioned(id));
        }
        let (secret, hash) = new_secret().await?;
        let changed = self
            .execute(
                "UPDATE device_credentials SET secret_hash = $1, rotated_ms = $2
                 WHERE device_id = $3",
                vec![hash.into(), Value::Int(now_ms()), id.into()],
            )
            .await
            .with_context(|| format!("cannot rotate the secret of {id:?}"))?;
        if changed == 0 {
            // Revoked between the look-up and the update.
            return Err(not_provisioned(id));
        }
        Ok(secret)
    }

    /// Takes a device's credential away: it can no longer connect (until provisioned
    /// again, with a new secret).
    pub async fn revoke_device(&self, id: &str) -> Result<(), AccountError> {
        let deleted = self
            .execute(
                "DELETE FROM device_credentials WHERE device_id = $1",
                vec![id.into()],
            )
            .await
            .with_context(|| format!("cannot revoke the device {id:?}"))?;
        if deleted == 0 {
            return Err(not_provisioned(id));
        }
        Ok(())
    }

    /// Every provisioned device, sorted by id; no secrets, nor their hashes.
    pub async fn provisioned_devices(&self) -> anyhow::Result<Vec<ProvisionedDevice>> {
        let mut devices = self
            .query(
                "SELECT device_id, created_ms, rotated_ms FROM device_credentials",
                vec![],
            )
            .await
            .context("cannot list the provisioned devices")?
            .iter()
            .map(device_from)
            .collect::<anyhow::Result<Vec<_>>>()?;
        // In Rust, not SQL: PostgreSQL's collation depends on the database's locale.
        devices.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(devices)
    }

    /// Whether `secret` is the provisioned device `id`'s. An unknown id costs the same
    /// argon2 verification as a known one (against a decoy hash), so the time taken
    /// does not tell which devices are provisioned; a secret longer than any handed out
    /// is refused without hashing.
    ///
    /// A device reconnects often (every broker restart, every GPRS drop), and argon2
    /// costs ~20 ms of CPU: a secret that verified against a stored hash is remembered
    /// with that hash ([`Verified`]), so the next login with it costs a row read and a
    /// SHA-256. Rotating or revoking changes or deletes the row, which every replica
    /// reads, so nothing remembered outlives its credential anywhere.
    pub async fn check_device_secret(&self, id: &str, secret: &str) -> anyhow::Result<bool> {
        if secret.len() > MAX_SECRET_BYTES {
            return Ok(false);
        }
        // The whole check, from the lookup on, is a task of its own, so that a right
        // secret is remembered even when the caller gave up meanwhile: with a whole fleet
        // logging in at once, a check can finish after the broker dropped the login (its
        // handshake timed out), and the device's next attempt then gets in at once instead
        // of waiting for another check.
        let store = self.clone();
        let id = id.to_owned();
        let secret = secret.to_owned();
        tokio::spawn(async move { store.check_device_secret_now(&id, &secret).await })
            .await
            .context("the secret check stopped unexpectedly")?
    }

    async fn check_device_secret_now(&self, id: &str, secret: &str) -> anyhow::Result<bool> {
        let hash = self
            .query_opt(
                "SELECT secret_hash FROM device_credentials WHERE device_id = $1",
                vec![id.into()],
            )
            .await
            .context("cannot look the device's credential up")?
            .map(|row| row.text(0).map(str::to_owned))
            .transpose()?;
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let Some(hash) = hash else {
            // Unknown devices cost the same argon2 run as known ones.
            return verify_password(secret, None).await;
        };
        if verified().seen(&hash, &digest) {
            return Ok(true);
        }
        let valid = verify_password(secret, Some(hash.clone())).await?;
        if valid {
            verified().remember(hash, digest);
        }
        Ok(valid)
    }

    /// A provisioned device's row, without its hash.
    async fn credential_row(&self, id: &str) -> anyhow::Result<Option<ProvisionedDevice>> {
        self.query_opt(
            "SELECT device_id, created_ms, rotated_ms FROM device_credentials
             WHERE device_id = $1",
            vec![id.into()],
        )
        .await
        .with_context(|| format!("cannot look up the device {id:?}"))?
        .map(|row| device_from(&row))
        .transpose()
    }
}

/// Stored secret hashes that a presented secret verified against, with that secret's
/// SHA-256: the same secret against the same hash needs no second argon2 run. Keyed by
/// the stored hash (salted, so unique per credential): a rotated or revoked credential's
/// entry is never looked up again. Bounded: past [`Verified::MAX`] entries it starts
/// afresh.
#[derive(Debug, Default)]
struct Verified {
    entries: Mutex<HashMap<String, [u8; 32]>>,
}

impl Verified {
    /// Room for a large fleet: about 200 bytes an entry.
    const MAX: usize = 200_000;

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, [u8; 32]>> {
        // A panic elsewhere cannot leave the map inconsistent: take it as it is.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn seen(&self, hash: &str, digest: &[u8; 32]) -> bool {
        self.entries()
            .get(hash)
            .is_some_and(|known| known.iter().zip(digest).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0)
    }

    fn remember(&self, hash: String, digest: [u8; 32]) {
        let mut entries = self.entries();
        if entries.len() >= Self::MAX {
            entries.clear();
        }
        entries.insert(hash, digest);
    }
}

/// The process's one [`Verified`].
fn verified() -> &'static Verified {
    static VERIFIED: OnceLock<Verified> = OnceLock::new();
    VERIFIED.get_or_init(Verified::default)
}

/// A fresh secret and its argon2id hash.
async fn new_secret() -> anyhow::Result<(String, String)> {
    let secret = hex::encode(random_bytes::<SECRET_BYTES>()?);
    let hash = hash_password(&secret).await?;
    Ok((secret, hash))
}

/// A row of `device_id, created_ms, rotated_ms`.
fn device_from(row: &Row) -> anyhow::Result<ProvisionedDevice> {
    Ok(ProvisionedDevice {
        id: row.text(0)?.to_owned(),
        created_ms: row.unsigned(1)?,
        rotated_ms: row.opt_int(2)?.map(|ms| ms.max(0) as u64),
    })
}

fn not_provisioned(id: &str) -> AccountError {
    AccountError::NotFound(format!("the device {id:?} is not provisioned"))
}

#[cfg(test)]
mod tests {
    use sha2::{Digest as _, Sha256};

    use super::verified;
    use crate::Store;

    #[tokio::test]
    async fn a_right_secret_is_remembered_even_when_the_caller_gave_up() {
        let store = Store::open("memory").await.unwrap();
        let id = format!("gave-up-{:08x}", fastrand::u32(..));
        let secret = store.provision_device(&id).await.unwrap();
        let hash: String = store
            .query_opt(
                "SELECT secret_hash FROM device_credentials WHERE device_id = $1",
                vec![id.as_str().into()],
            )
            .await
            .unwrap()
            .expect("provisioned")
            .text(0)
            .unwrap()
            .to_owned();
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        // The caller gives up long before argon2 is done (a login dropped by the broker).
        let gave_up = tokio::time::timeout(
            std::time::Duration::from_micros(1),
            store.check_device_secret(&id, &secret),
        )
        .await;
        assert!(gave_up.is_err(), "the check cannot be that fast");
        assert!(!verified().seen(&hash, &digest));
        // The check goes on without it, and its answer is kept for the next attempt.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !verified().seen(&hash, &digest) {
            assert!(
                std::time::Instant::now() < deadline,
                "the finished check was thrown away"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(store.check_device_secret(&id, &secret).await.unwrap());
    }
}
