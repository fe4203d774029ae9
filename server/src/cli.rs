//! The tasks `tether-server` does instead of serving: creating and listing users, and
//! checking the audit trail (an error, so exit status 1, when it is broken). They use the database the server would
//! (`TETHER_DATABASE_URL`), so they can run beside a running server.

use std::io::BufRead as _;

use anyhow::Context as _;
use store::{NewAudit, Store};

use crate::{
    auth::login::random_hex,
    config::{AuditCommand, Command, Config, UserCommand},
};

pub async fn run(config: &Config, command: Command) -> anyhow::Result<()> {
    if config.database_url == "none" {
        anyhow::bail!(
            "TETHER_DATABASE_URL=none keeps nothing: users and the audit trail need a database"
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
