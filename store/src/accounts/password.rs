//! Password hashing, for users' passwords and devices' secrets (`devices`). argon2
//! takes tens of milliseconds of CPU by design, so it runs on tokio's blocking pool,
//! never on a worker thread serving requests. And 19 MiB of memory while it runs: a
//! flood of logins with wrong passwords (a thousand half-open broker handshakes, say)
//! must not run a thousand of them at once, so at most [`slots`] run together and the
//! rest wait their turn (within their own deadlines, the broker's handshake timeout).

use std::sync::OnceLock;

use anyhow::Context as _;
use argon2::{
    Argon2, PasswordHash, PasswordHasher as _, PasswordVerifier as _, password_hash::SaltString,
};
use tokio::sync::Semaphore;

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

/// How many hashes may run at once: two per core, enough to keep every core busy.
fn slots() -> &'static Semaphore {
    static SLOTS: OnceLock<Semaphore> = OnceLock::new();
    SLOTS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Semaphore::new(cores * 2)
    })
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    // Held until the hash is done; dropped with the future if its caller gives up
    // waiting (the hash, once started, finishes on its own thread).
    let _slot = slots()
        .acquire()
        .await
        .context("the password hashing slots are closed")?;
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_flood_of_checks_runs_only_a_few_hashes_at_once() {
        use std::sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        };
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let checks = (0..40).map(|_| {
            let (running, most) = (running.clone(), most.clone());
            tokio::spawn(async move {
                blocking(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                })
                .await
            })
        });
        for check in checks.collect::<Vec<_>>() {
            check.await.unwrap().unwrap();
        }
        let limit = std::thread::available_parallelism().map_or(2, |n| n.get()) * 2;
        let most = most.load(Ordering::SeqCst);
        assert!((1..=limit).contains(&most), "{most} hashes ran at once");
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
