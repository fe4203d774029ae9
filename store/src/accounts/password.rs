//! Password hashing, for users' passwords and devices' secrets (`devices`). argon2
//! takes tens of milliseconds of CPU by design, so it runs on tokio's blocking pool,
//! never on a worker thread serving requests.

use anyhow::Context as _;
use argon2::{
    Argon2, PasswordHash, PasswordHasher as _, PasswordVerifier as _, password_hash::SaltString,
};

use super::random_bytes;

/// An argon2id PHC string with a fresh salt.
pub(crate) async fn hash_password(password: &str) -> anyhow::Result<String> {
    let password = password.to_owned();
    let salt = SaltString::encode_b64(&random_bytes::<16>()?)
        .map_err(|error| anyhow::anyhow!("cannot encode a salt: {error}"))?;
    blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|error| anyhow::anyhow!("cannot hash the password: {error}"))
    })
    .await
}

/// Whether the password matches the PHC string; with no string, checks it against a
/// hash of nothing anyone knows and says no, in about the same time.
pub(crate) async fn verify_password(password: &str, hash: Option<String>) -> anyhow::Result<bool> {
    let password = password.to_owned();
    blocking(move || {
        let hash = hash.as_deref();
        let parsed = PasswordHash::new(hash.unwrap_or(DUMMY_HASH))
            .map_err(|error| anyhow::anyhow!("a stored password hash does not parse: {error}"))?;
        let matches = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        Ok(matches && hash.is_some())
    })
    .await
}

/// A hash of a password no one has, with argon2's default parameters, for unknown names
/// to be checked against. Written out rather than made at first use, so that the first
/// unknown name does not take twice as long as the rest; a test checks it still has
/// the crate's defaults.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$dGV0aGVyLW5vLXVzZXIhIQ$F1vasfygy3lX/B6Z5kjD66qJhK2C4xfc0sHvaz6VLuo";

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .context("a password task panicked")?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dummy_hash_costs_what_a_real_one_does() {
        let dummy = PasswordHash::new(DUMMY_HASH).unwrap();
        let (params, defaults) = (
            argon2::Params::try_from(&dummy).unwrap(),
            argon2::Params::default(),
        );
        assert_eq!(dummy.algorithm, argon2::Algorithm::default().ident());
        assert_eq!(
            (params.m_cost(), params.t_cost(), params.p_cost()),
            (defaults.m_cost(), defaults.t_cost(), defaults.p_cost()),
            "make DUMMY_HASH again with the new defaults"
        );
    }

    #[tokio::test]
    async fn hashes_verify_and_a_missing_one_never_does() {
        let hash = hash_password("correct horse").await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(
            verify_password("correct horse", Some(hash.clone()))
                .await
                .unwrap()
        );
        assert!(!verify_password("wrong horse", Some(hash)).await.unwrap());
        assert!(!verify_password("", None).await.unwrap());
        assert!(
            verify_password("x", Some("not a hash".into()))
                .await
                .is_err()
        );
    }
}
