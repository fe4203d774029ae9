//! Device credentials: which devices may connect to the broker, and the secret each
//! one connects with (as its AMQP user name and password).
//!
//! A device is provisioned once by an admin, who is shown its secret that one time:
//! 24 random bytes from the operating system, in hex. Only the secret's SHA-256 is
//! kept (`sha256$<hex>`), as for API tokens, so a copy of the database lets no device
//! in: a 192-bit random secret cannot be found from its hash, so a slow hash, which
//! people's passwords need (`accounts/password.rs`), would add nothing but its cost,
//! and that cost is what a whole fleet logging in at once pays (argon2 let about 25
//! devices a second in on 2 cores; 10,000 took over ten minutes). Credentials made
//! before this kept an argon2id hash: they still work, and the first login with the
//! right secret replaces the hash with its SHA-256. Rotating replaces the hash (the
//! old secret stops working at once); revoking deletes the row.
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
    accounts::{password::verify_password, random_bytes},
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

    /// Whether `secret` is the provisioned device `id`'s: its SHA-256 compared in
    /// constant time with the one stored, which an unknown id costs as well; a secret
    /// longer than any handed out is refused without hashing.
    ///
    /// An older credential's argon2id hash (~20 ms of CPU a check) is verified as
    /// before, an unknown id then costing the same verification against a decoy, and
    /// replaced by the secret's SHA-256 once the right secret came. Until then a
    /// secret that verified is remembered with that hash ([`Verified`]), so the next
    /// login with it costs a row read and a SHA-256. Rotating or revoking changes or
    /// deletes the row, which every replica reads, so nothing remembered outlives its
    /// credential anywhere.
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
            // Unknown: the SHA-256 above is what a known device costs.
            return Ok(false);
        };
        if let Some(stored) = hash.strip_prefix(SHA256_PREFIX) {
            return Ok(same(stored.as_bytes(), hex::encode(digest).as_bytes()));
        }
        if verified().seen(&hash, &digest) {
            self.upgrade_secret_hash(id, &hash, &digest).await;
            return Ok(true);
        }
        let valid = verify_password(secret, Some(hash.clone())).await?;
        if valid {
            self.upgrade_secret_hash(id, &hash, &digest).await;
            verified().remember(hash, digest);
        }
        Ok(valid)
    }

    /// Replaces an older credential's argon2id hash with the SHA-256 of the secret that
    /// just verified against it, unless it was rotated or revoked meanwhile. A failure
    /// is only logged: the credential works as it is.
    async fn upgrade_secret_hash(&self, id: &str, argon2: &str, digest: &[u8; 32]) {
        let hash = format!("{SHA256_PREFIX}{}", hex::encode(digest));
        if let Err(error) = self
            .execute(
                "UPDATE device_credentials SET secret_hash = $1
                 WHERE device_id = $2 AND secret_hash = $3",
                vec![hash.into(), id.into(), argon2.into()],
            )
            .await
        {
            tracing::warn!("cannot replace the argon2 hash of the device {id:?}: {error:#}");
        }
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

/// How a stored secret hash that is a SHA-256 begins (an argon2id one begins `$argon2`).
const SHA256_PREFIX: &str = "sha256$";

/// A fresh secret and its stored form, `sha256$<hex>`.
async fn new_secret() -> anyhow::Result<(String, String)> {
    let secret = hex::encode(random_bytes::<SECRET_BYTES>()?);
    let hash = format!(
        "{SHA256_PREFIX}{}",
        hex::encode(Sha256::digest(secret.as_bytes()))
    );
    Ok((secret, hash))
}

/// Whether `a` and `b` are equal, in a time that depends only on their lengths.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// A row of `device_id, created_ms, rotated_ms`.
fn device_from(row: &Row) -> anyhow::Result<ProvisionedDevice> {
    Ok(ProvisionedDevice {
        id: row.text(0)?.to_owned(),
        created_ms: row.unsigned(1)?,
        rotated_ms: row.opt_int(2)?.map(|ms| ms.max(0) as u64),
        // Not the store's to know: the hub's (the API adds it).
        hello_refused: None,
    })
}

fn not_provisioned(id: &str) -> AccountError {
    AccountError::NotFound(format!("the device {id:?} is not provisioned"))
}

#[cfg(test)]
mod tests {
    use sha2::{Digest as _, Sha256};

    use super::verified;
    use crate::{Store, now_ms, sql::Value};

    async fn stored_hash(store: &Store, id: &str) -> String {
        store
            .query_opt(
                "SELECT secret_hash FROM device_credentials WHERE device_id = $1",
                vec![id.into()],
            )
            .await
            .unwrap()
            .expect("provisioned")
            .text(0)
            .unwrap()
            .to_owned()
    }

    /// A device provisioned before secrets were kept as SHA-256: an argon2id hash.
    async fn provisioned_long_ago(store: &Store, id: &str) -> String {
        let secret = hex::encode(crate::accounts::random_bytes::<24>().unwrap());
        let hash = crate::accounts::password::hash_password(&secret)
            .await
            .unwrap();
        store
            .execute(
                "INSERT INTO device_credentials (device_id, secret_hash, created_ms, rotated_ms)
                 VALUES ($1, $2, $3, NULL)",
                vec![id.into(), hash.into(), Value::Int(now_ms())],
            )
            .await
            .unwrap();
        secret
    }

    #[tokio::test]
    async fn a_secret_is_kept_as_its_sha256_and_checked_against_it() {
        let store = Store::open("memory").await.unwrap();
        let id = format!("sha-{:08x}", fastrand::u32(..));
        let secret = store.provision_device(&id).await.unwrap();
        let digest = hex::encode(Sha256::digest(secret.as_bytes()));
        assert_eq!(stored_hash(&store, &id).await, format!("sha256${digest}"));
        assert!(!stored_hash(&store, &id).await.contains(&secret));
        assert!(store.check_device_secret(&id, &secret).await.unwrap());
        assert!(!store.check_device_secret(&id, &secret[1..]).await.unwrap());
        assert!(!store.check_device_secret(&id, &digest).await.unwrap());
        assert!(
            !store
                .check_device_secret("nobody-here", &secret)
                .await
                .unwrap()
        );
        // Rotated: the old secret is out at once, the new one in.
        let rotated = store.rotate_device_secret(&id).await.unwrap();
        assert!(!store.check_device_secret(&id, &secret).await.unwrap());
        assert!(store.check_device_secret(&id, &rotated).await.unwrap());
    }

    #[tokio::test]
    async fn an_older_argon2_credential_works_and_becomes_a_sha256_at_its_first_right_login() {
        let store = Store::open("memory").await.unwrap();
        let id = format!("argon-{:08x}", fastrand::u32(..));
        let secret = provisioned_long_ago(&store, &id).await;
        let argon2 = stored_hash(&store, &id).await;
        assert!(argon2.starts_with("$argon2id$"), "{argon2}");
        // A wrong secret changes nothing.
        assert!(!store.check_device_secret(&id, "wrong").await.unwrap());
        assert_eq!(stored_hash(&store, &id).await, argon2);
        // The right one gets in, and is kept as its SHA-256 from then on.
        assert!(store.check_device_secret(&id, &secret).await.unwrap());
        let digest = hex::encode(Sha256::digest(secret.as_bytes()));
        assert_eq!(stored_hash(&store, &id).await, format!("sha256${digest}"));
        assert!(store.check_device_secret(&id, &secret).await.unwrap());
        assert!(!store.check_device_secret(&id, "wrong").await.unwrap());
    }

    #[tokio::test]
    async fn a_right_secret_is_remembered_even_when_the_caller_gave_up() {
        let store = Store::open("memory").await.unwrap();
        let id = format!("gave-up-{:08x}", fastrand::u32(..));
        let secret = provisioned_long_ago(&store, &id).await;
        let hash = stored_hash(&store, &id).await;
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
        assert!(stored_hash(&store, &id).await.starts_with("sha256$"));
        assert!(store.check_device_secret(&id, &secret).await.unwrap());
    }
}
