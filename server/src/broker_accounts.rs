//! The embedded broker's accounts. Servers log in with the server account: its name is
//! `TETHER_BROKER_USER` (`tether-server` unless set), its password
//! `TETHER_BROKER_PASSWORD` or, unset, one made up on first start and kept in the data
//! folder (`broker-password`, readable by its owner only), so replicas sharing that
//! folder's copy and restarts keep it. Devices log in as their id with the secret they
//! were provisioned with, checked against the database ([`DeviceLogins`]).

use std::{
    future::Future,
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    pin::Pin,
};

use anyhow::Context as _;
use protocol::{DeviceId, policy::Account};
use store::Store;

/// The file in the data folder holding the server account's made-up password.
const PASSWORD_FILE: &str = "broker-password";

/// The server account's password: the one configured, else the one kept in
/// `data_dir`, else a new one written there first.
pub fn server_password(configured: Option<&str>, data_dir: &Path) -> anyhow::Result<String> {
    if let Some(password) = configured {
        anyhow::ensure!(
            !password.is_empty(),
            "TETHER_BROKER_PASSWORD is set but empty: unset it to have one made up"
        );
        return Ok(password.to_owned());
    }
    let path = data_dir.join(PASSWORD_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let password = text.trim();
            anyhow::ensure!(
                !password.is_empty(),
                "{} is empty; delete it to have a new password made up",
                path.display()
            );
            Ok(password.to_owned())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir)
                .with_context(|| format!("cannot create {}", data_dir.display()))?;
            let password = made_up_password()?;
            write_private(&path, &password)?;
            tracing::info!(
                "made up the embedded broker's server password (kept in {})",
                path.display()
            );
            Ok(password)
        }
        Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// 32 random bytes from the operating system, as hex.
fn made_up_password() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|error| anyhow::anyhow!("no randomness from the system: {error}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `text` to a new file only its owner may read. Created exclusively: two
/// servers starting at once on one folder do not overwrite each other's password
/// (the second fails and is told why).
fn write_private(path: &PathBuf, text: &str) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(format!("{text}\n").as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Devices' logins to the embedded broker, checked against their provisioned secrets.
#[derive(Debug, Clone)]
pub struct DeviceLogins {
    pub store: Store,
    /// The server account's name: nobody logs in under it as a device, whatever the
    /// database holds.
    pub server_user: String,
}

impl broker::Authenticator for DeviceLogins {
    fn authenticate<'a>(
        &'a self,
        user: &'a str,
        password: &'a str,
        _peer: IpAddr,
    ) -> Pin<Box<dyn Future<Output = Option<Account>> + Send + 'a>> {
        Box::pin(async move {
            if user == self.server_user {
                return None;
            }
            let id = DeviceId::new(user).ok()?;
            match self.store.check_device_secret(user, password).await {
                Ok(true) => Some(Account::Device(id)),
                Ok(false) => None,
                Err(error) => {
                    tracing::error!(
                        "cannot check device {user}'s secret, refusing its login: {error:#}"
                    );
                    None
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_made_up_password_is_kept_and_private() {
        let dir = std::env::temp_dir().join(format!("tether-broker-pw-{:016x}", fastrand::u64(..)));
        let first = server_password(None, &dir).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(server_password(None, &dir).unwrap(), first, "kept");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.join(PASSWORD_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(server_password(Some("given"), &dir).unwrap(), "given");
        assert!(server_password(Some(""), &dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
