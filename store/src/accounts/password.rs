//! Password hashing, for users' passwords and devices' secrets (`devices`). argon2
//! takes tens of milliseconds of CPU by design, so it runs on threads of its own, never
//! on a worker thread serving requests. And 19 MiB of memory while it runs: a flood of
//! logins with wrong passwords (a thousand half-open broker handshakes, say) must not
//! run a thousand of them at once, so at most [`slots`] run together and the rest wait
//! their turn (within their own deadlines, the broker's handshake timeout).
//!
//! That memory is allocated once per hashing thread and reused: there are exactly
//! [`slots`] of them. (Allocated and freed for every hash on tokio's blocking pool,
//! whose threads come and go, it stayed with the allocator: a server held 1.7 to 5.7 GB
//! after 300 device logins, BENCHMARKS.md.)

use std::sync::{Mutex, OnceLock, mpsc};

use anyhow::Context as _;
use argon2::{
    Algorithm, Argon2, Block, Params, PasswordHash, Version,
    password_hash::{Output, ParamsString, Salt, SaltString},
};
use tokio::sync::{Semaphore, oneshot};

use super::random_bytes;

/// An argon2id PHC string with a fresh salt.
pub(crate) async fn hash_password(password: &str) -> anyhow::Result<String> {
    let password = password.to_owned();
    let salt = SaltString::encode_b64(&random_bytes::<16>()?)
        .map_err(|error| anyhow::anyhow!("cannot encode a salt: {error}"))?;
    blocking(move |memory| {
        let params = Params::default();
        let salt = salt.as_salt();
        let output = compute(
            Algorithm::default(),
            Version::default(),
            &params,
            salt,
            password.as_bytes(),
            Params::DEFAULT_OUTPUT_LEN,
            memory,
        )?;
        let hash = PasswordHash {
            algorithm: Algorithm::default().ident(),
            version: Some(Version::default().into()),
            params: ParamsString::try_from(&params)
                .map_err(|error| anyhow::anyhow!("cannot write the parameters: {error}"))?,
            salt: Some(salt),
            hash: Some(output),
        };
        Ok(hash.to_string())
    })
    .await
}

/// Whether the password matches the PHC string; with no string, checks it against a
/// hash of nothing anyone knows and says no, in about the same time.
pub(crate) async fn verify_password(password: &str, hash: Option<String>) -> anyhow::Result<bool> {
    let password = password.to_owned();
    blocking(move |memory| {
        let stored = hash.as_deref();
        let parsed = PasswordHash::new(stored.unwrap_or(DUMMY_HASH))
            .map_err(|error| anyhow::anyhow!("a stored password hash does not parse: {error}"))?;
        let unreadable = |what: &str| anyhow::anyhow!("a stored password hash has {what}");
        let algorithm = Algorithm::try_from(parsed.algorithm)
            .map_err(|_| unreadable("an unknown algorithm"))?;
        let version = parsed
            .version
            .map(Version::try_from)
            .transpose()
            .map_err(|_| unreadable("an unknown version"))?
            .unwrap_or_default();
        let params = Params::try_from(&parsed).map_err(|_| unreadable("bad parameters"))?;
        let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
            return Err(unreadable("no salt or no hash"));
        };
        let output = compute(
            algorithm,
            version,
            &params,
            salt,
            password.as_bytes(),
            expected.len(),
            memory,
        )?;
        // `Output`'s comparison takes the same time whatever differs.
        Ok(output == expected && stored.is_some())
    })
    .await
}

/// argon2 of `password` with `salt` into `len` bytes, in `memory` (grown as needed and
/// kept by the caller for the next hash).
fn compute(
    algorithm: Algorithm,
    version: Version,
    params: &Params,
    salt: Salt<'_>,
    password: &[u8],
    len: usize,
    memory: &mut Vec<Block>,
) -> anyhow::Result<Output> {
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt
        .decode_b64(&mut salt_bytes)
        .map_err(|error| anyhow::anyhow!("a salt that does not decode: {error}"))?;
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    let argon = Argon2::new(algorithm, version, params.clone());
    Output::init_with(len, |out| {
        argon
            .hash_password_into_with_memory(password, salt_bytes, out, &mut memory[..blocks])
            .map_err(|_| argon2::password_hash::Error::Password)
    })
    .map_err(|error| anyhow::anyhow!("cannot hash the password: {error}"))
}

/// A hash of a password no one has, with argon2's default parameters, for unknown names
/// to be checked against. Written out rather than made at first use, so that the first
/// unknown name does not take twice as long as the rest; a test checks it still has
/// the crate's defaults.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$dGV0aGVyLW5vLXVzZXIhIQ$F1vasfygy3lX/B6Z5kjD66qJhK2C4xfc0sHvaz6VLuo";

/// How many hashes may run at once: two per core, enough to keep every core busy.
fn slots() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()) * 2
}

fn permits() -> &'static Semaphore {
    static PERMITS: OnceLock<Semaphore> = OnceLock::new();
    PERMITS.get_or_init(|| Semaphore::new(slots()))
}

/// One hash to run, with the thread's own memory.
type Job = Box<dyn FnOnce(&mut Vec<Block>) + Send>;

/// The hashing threads' queue: [`slots`] threads, each with its memory, started on
/// first use.
fn hashers() -> &'static Mutex<mpsc::Sender<Job>> {
    static HASHERS: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    HASHERS.get_or_init(|| {
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = std::sync::Arc::new(Mutex::new(receiver));
        for n in 0..slots() {
            let receiver = receiver.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{n}"))
                .spawn(move || {
                    let mut memory: Vec<Block> = Vec::new();
                    loop {
                        let job = {
                            let queue = receiver
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner);
                            queue.recv()
                        };
                        match job {
                            Ok(job) => job(&mut memory),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(error) = spawned {
                tracing::error!("cannot start a password hashing thread: {error}");
            }
        }
        Mutex::new(sender)
    })
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce(&mut Vec<Block>) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    // Held until the hash is done; dropped with the future if its caller gives up
    // waiting (the hash, once started, finishes on its own thread).
    let _slot = permits()
        .acquire()
        .await
        .context("the password hashing slots are closed")?;
    let (done, result) = oneshot::channel();
    let job: Job = Box::new(move |memory| {
        let _ = done.send(work(memory));
    });
    hashers()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .send(job)
        .map_err(|_| anyhow::anyhow!("the password hashing threads are gone"))?;
    result.await.context("a password hash failed to run")?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dummy_hash_costs_what_a_real_one_does() {
        let dummy = PasswordHash::new(DUMMY_HASH).unwrap();
        let (params, defaults) = (Params::try_from(&dummy).unwrap(), Params::default());
        assert_eq!(dummy.algorithm, Algorithm::default().ident());
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
                blocking(move |_| {
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
        let limit = slots();
        let most = most.load(Ordering::SeqCst);
        assert!((1..=limit).contains(&most), "{most} hashes ran at once");
    }

    #[tokio::test]
    async fn hashes_are_argon2s_own_both_ways() {
        use argon2::{PasswordHasher as _, PasswordVerifier as _};
        // Made by the crate's own hasher (as stored before the memory was reused).
        let salt = SaltString::encode_b64(b"sixteen byte slt").unwrap();
        let theirs = Argon2::default()
            .hash_password(b"old secret", &salt)
            .unwrap()
            .to_string();
        assert!(
            verify_password("old secret", Some(theirs.clone()))
                .await
                .unwrap()
        );
        assert!(!verify_password("old secret!", Some(theirs)).await.unwrap());
        // Ours, checked by the crate's own verifier.
        let ours = hash_password("new secret").await.unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"new secret", &parsed)
                .is_ok()
        );
        assert!(
            Argon2::default()
                .verify_password(b"new secrets", &parsed)
                .is_err()
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
