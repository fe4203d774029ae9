//! The tasks `tether-server` does instead of serving: creating and listing users,
//! provisioning devices, and checking the audit trail (an error, so exit status 1, when
//! it is broken). They use the database the server would (`TETHER_DATABASE_URL`), so
//! they can run beside a running server. Every change is written to the audit trail,
//! as the API's are, with the command as the actor.

use std::io::BufRead as _;

use anyhow::Context as _;
use store::{NewAudit, Store};

use crate::{
    auth::login::random_hex,
    config::{AuditCommand, Command, Config, DeviceCommand, UserCommand},
    provision,
};

pub async fn run(config: &Config, command: Command) -> anyhow::Result<()> {
    if config.database_url == "none" {
        anyhow::bail!(
            "TETHER_DATABASE_URL=none keeps nothing: users, devices and the audit trail need a database"
        );
    }
    let store = Store::open(&config.database_url).await?;
    match command {
        Command::User(UserCommand::Add {
            name,
            role,
            groups,
            password_stdin,
        }) => {
            let (password, made_up) = if password_stdin {
                let mut line = String::new();
                std::io::stdin()
                    .lock()
                    .read_line(&mut line)
                    .context("cannot read the password from standard input")?;
                (line.trim_end_matches(['\r', '\n']).to_owned(), false)
            } else {
                (random_hex(12)?, true)
            };
            let user = store.add_user(&name, &password, role, &groups).await?;
            store
                .audit_append(NewAudit {
                    actor: "tether-server user add".into(),
                    source: "command line".into(),
                    action: "user_created".into(),
                    target: user.name.clone(),
                    detail: format!("role {}, groups [{}]", user.role, user.groups.join(", ")),
                })
                .await?;
            println!("created user {} ({})", user.name, user.role);
            if made_up {
                println!("password: {password}");
            }
        }
        Command::User(UserCommand::List) => {
            for user in store.users().await? {
                println!("{}\t{}\t{}", user.name, user.role, user.groups.join(","));
            }
        }
        Command::Device(command) => device(config, &store, command).await?,
        Command::Audit(AuditCommand::Verify) => {
            let check = store.audit_verify().await?;
            match check.broken_at {
                None => println!("the audit trail is intact: {} entries", check.entries),
                Some(seq) => {
                    let why = check.why.unwrap_or_default();
                    anyhow::bail!("the audit trail is broken at entry {seq}: {why}");
                }
            }
        }
    }
    Ok(())
}

const UNAUDITED: &str = "done, but the audit trail could not be written";

/// `tether-server device …`.
async fn device(config: &Config, store: &Store, command: DeviceCommand) -> anyhow::Result<()> {
    let audited = |command: &str, action: &str, id: &str, detail: &str| NewAudit {
        actor: format!("tether-server device {command}"),
        source: "command line".into(),
        action: action.into(),
        target: id.to_owned(),
        detail: detail.into(),
    };
    match command {
        DeviceCommand::Add { id, secrets_file } => {
            refuse_server_account(config, &id)?;
            let secret = store.provision_device(&id).await?;
            // Shown before the audit write: should that fail, the secret is not lost.
            println!("provisioned device {id}");
            hand_over(config, &id, &secret, secrets_file.as_deref())?;
            store
                .audit_append(audited(
                    "add",
                    "device_provisioned",
                    &id,
                    provision::PROVISIONED,
                ))
                .await
                .context(UNAUDITED)?;
        }
        DeviceCommand::List => {
            for device in store.provisioned_devices().await? {
                let rotated = device
                    .rotated_ms
                    .map_or_else(|| "-".to_owned(), |ms| ms.to_string());
                println!("{}\t{}\t{rotated}", device.id, device.created_ms);
            }
        }
        DeviceCommand::Rotate { id, secrets_file } => {
            let secret = store.rotate_device_secret(&id).await?;
            println!("new secret for device {id}; the old one no longer connects");
            hand_over(config, &id, &secret, secrets_file.as_deref())?;
            store
                .audit_append(audited(
                    "rotate",
                    "device_secret_rotated",
                    &id,
                    provision::ROTATED,
                ))
                .await
                .context(UNAUDITED)?;
        }
        DeviceCommand::Remove { id } => {
            store.revoke_device(&id).await?;
            store
                .audit_append(audited("remove", "device_revoked", &id, provision::REVOKED))
                .await
                .context(UNAUDITED)?;
            println!("revoked device {id}: it can no longer connect");
        }
    }
    Ok(())
}

/// The broker account this server's configuration logs in as: the embedded broker's
/// server account, or the user of `TETHER_AMQP_URL`.
fn server_account(config: &Config) -> String {
    match &config.amqp_url {
        Some(url) => common::amqp_user(url),
        None => config.broker_user.clone(),
    }
}

/// Agents obey the server account: no device may log in under its name.
fn refuse_server_account(config: &Config, id: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        id != server_account(config),
        "{id:?} is the servers' own broker account; a device cannot have that name"
    );
    Ok(())
}

/// The secret: appended to `secrets_file`, or printed once with the line that starts
/// `tether-agent` with it (see [`agent_line`]).
fn hand_over(
    config: &Config,
    id: &str,
    secret: &str,
    secrets_file: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let Some(path) = secrets_file else {
        print_secret(config, id, secret);
        return Ok(());
    };
    let mut options = std::fs::OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    std::io::Write::write_all(&mut file, format!("{id} {secret}\n").as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("secret written to {}", path.display());
    Ok(())
}

fn print_secret(config: &Config, id: &str, secret: &str) {
    println!("secret (shown this once, stored only as a hash): {secret}");
    match agent_line(config, id, secret) {
        Some(line) => println!("{line}"),
        None => eprintln!(
            "the broker URL cannot carry a credential: the device connects as user {id} with the secret as its password"
        ),
    }
    if config.amqp_url.is_none() && config.broker_addr.ip().is_unspecified() {
        eprintln!(
            "(the embedded broker listens on every address: put this machine's address in place of {})",
            config.broker_addr.ip()
        );
    }
}

/// `TETHER_AMQP_URL=… TETHER_DEVICE_SECRET=… tether-agent --device-id ID`: the
/// configured broker's URL (`TETHER_AMQP_URL`) without the server's credential, or else
/// the embedded broker's (`TETHER_BROKER_ADDR`); the secret in the environment, where
/// other users of the device cannot read it (they can read command lines), and the
/// server account the agent is to obey when it is not the default. `None` if that URL
/// does not parse.
fn agent_line(config: &Config, id: &str, secret: &str) -> Option<String> {
    let broker = match &config.amqp_url {
        Some(url) => url.clone(),
        None => format!("amqp://{}/%2f", config.broker_addr),
    };
    let url = provision::device_broker_url(&broker)?;
    let server = server_account(config);
    let obey = if server == "tether-server" {
        String::new()
    } else {
        format!("TETHER_SERVER_ACCOUNTS={} ", shell_word(&server))
    };
    Some(format!(
        "TETHER_AMQP_URL={} TETHER_DEVICE_SECRET={} {obey}tether-agent --device-id {}",
        shell_word(&url),
        shell_word(secret),
        shell_word(id)
    ))
}

/// `text` as one word for a POSIX shell: as it is when nothing in it is special, else
/// single-quoted.
fn shell_word(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_.:/@%=+,".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_line_names_the_broker_devices_use() {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 3000));
        let mut config = Config::new(addr, "amqp://guest:guest@rabbit.lan:5672/%2f");
        assert_eq!(
            agent_line(&config, "boiler-1", "ab12").as_deref(),
            Some(
                "TETHER_AMQP_URL=amqp://rabbit.lan:5672/%2f TETHER_DEVICE_SECRET=ab12 TETHER_SERVER_ACCOUNTS=guest tether-agent --device-id boiler-1"
            )
        );
        config.amqp_url = None;
        config.broker_addr = std::net::SocketAddr::from(([10, 0, 0, 5], 5673));
        assert_eq!(
            agent_line(&config, "boiler-1", "ab12").as_deref(),
            Some(
                "TETHER_AMQP_URL=amqp://10.0.0.5:5673/%2f TETHER_DEVICE_SECRET=ab12 tether-agent --device-id boiler-1"
            )
        );
        config.amqp_url = Some(String::new());
        assert_eq!(agent_line(&config, "boiler-1", "ab12"), None);
    }

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(
            shell_word("amqp://d-1:ab12@127.0.0.1:5673/%2f"),
            "amqp://d-1:ab12@127.0.0.1:5673/%2f"
        );
        assert_eq!(
            shell_word("amqps://d:s@host/v?heartbeat=10&x=1"),
            "'amqps://d:s@host/v?heartbeat=10&x=1'"
        );
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
    }
}
