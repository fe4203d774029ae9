//! Users, their device groups, and the groups of devices.
//!
//! Passwords are hashed with argon2id (the crate's default parameters) and kept as PHC
//! strings, which carry their own salt and parameters, so stronger parameters later
//! still verify old hashes (see `password`).
//!
//! Every change is one statement (see `sql` for why): a user's groups live in the
//! user's own row, and deleting a user removes that row first, which alone makes their
//! sessions and tokens invalid (they are looked up through it); marking them revoked
//! afterwards is for the listings.
//!
//! Sessions and API tokens are in `access`.

mod access;
pub(crate) mod password;

use std::collections::{BTreeSet, HashMap};

use anyhow::Context as _;
use password::{hash_password, verify_password};
use protocol::{auth::Role, auth::UserView, names::DeviceId};

use crate::{
    Store, now_ms,
    sql::{Row, Value},
};

pub(crate) const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS users (
        id BIGINT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL,
        group_names TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        created_ms BIGINT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS sessions (
        secret_hash TEXT PRIMARY KEY,
        user_id BIGINT NOT NULL,
        created_ms BIGINT NOT NULL,
        expires_ms BIGINT NOT NULL,
        revoked BIGINT NOT NULL DEFAULT 0
    );
    CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions (user_id);
    CREATE INDEX IF NOT EXISTS sessions_by_expiry ON sessions (expires_ms);
    CREATE TABLE IF NOT EXISTS api_tokens (
        id TEXT PRIMARY KEY,
        secret_hash TEXT NOT NULL UNIQUE,
        user_id BIGINT NOT NULL,
        owner TEXT NOT NULL,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        last_used_ms BIGINT,
        revoked BIGINT NOT NULL DEFAULT 0
    );
    CREATE INDEX IF NOT EXISTS api_tokens_by_owner ON api_tokens (owner);
    CREATE INDEX IF NOT EXISTS api_tokens_by_user ON api_tokens (user_id);
    CREATE TABLE IF NOT EXISTS device_groups (
        device TEXT PRIMARY KEY,
        group_names TEXT NOT NULL
    );
";

/// Why an account change was refused. The messages are meant for the person who asked.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// The input is not acceptable (a bad name, a short password, too high a role).
    #[error("{0}")]
    Invalid(String),
    /// The name is taken (or the device already provisioned).
    #[error("{0}")]
    Exists(String),
    /// No such user, token or provisioned device.
    #[error("{0}")]
    NotFound(String),
    /// The database failed.
    #[error("{0:#}")]
    Db(anyhow::Error),
}

impl From<anyhow::Error> for AccountError {
    fn from(error: anyhow::Error) -> Self {
        Self::Db(error)
    }
}

const MAX_NAME: usize = 64;
const MIN_PASSWORD_CHARS: usize = 8;
/// A bound, so that no login attempt has the server hash megabytes.
const MAX_PASSWORD_BYTES: usize = 1024;

/// The columns [`user_from`] reads, in its order.
const USER: &str = "id, name, role, group_names, created_ms";

impl Store {
    /// How many users there are (0 until the first admin is made).
    pub async fn user_count(&self) -> anyhow::Result<u64> {
        self.query_opt("SELECT COUNT(*) FROM users", vec![])
            .await
            .context("cannot count users")?
            .context("COUNT gave no row")?
            .unsigned(0)
    }

    /// Makes a user. Groups are sorted and repeated ones dropped.
    pub async fn add_user(
        &self,
        name: &str,
        password: &str,
        role: Role,
        groups: &[String],
    ) -> Result<UserView, AccountError> {
        check_user_name(name)?;
        check_new_password(password)?;
        let groups = group_set(groups)?;
        let taken = || AccountError::Exists(format!("a user named {name:?} already exists"));
        // Spares hashing for a name that is obviously taken; the insert below decides.
        if self.user_row(name).await?.is_some() {
            return Err(taken());
        }
        let hash = hash_password(password).await?;
        let user = UserView {
            name: name.to_owned(),
            role,
            groups,
            created_ms: now_ms().max(0) as u64,
        };
        let inserted = self
            .execute(
                "INSERT INTO users (id, name, role, group_names, password_hash, created_ms)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                vec![
                    Value::Int(random_id()?),
                    name.into(),
                    role.as_str().into(),
                    user.groups.join(",").into(),
                    hash.into(),
                    Value::Int(user.created_ms as i64),
                ],
            )
            .await
            .with_context(|| format!("cannot add the user {name:?}"))?;
        if inserted == 0 {
            return Err(taken());
        }
        Ok(user)
    }

    /// Every user, sorted by name.
    pub async fn users(&self) -> anyhow::Result<Vec<UserView>> {
        let sql = format!("SELECT {USER} FROM users");
        let mut users = self
            .query(&sql, vec![])
            .await
            .context("cannot list users")?
            .iter()
            .map(|row| Ok(user_from(row)?.1))
            .collect::<anyhow::Result<Vec<_>>>()?;
        // In Rust, not SQL: PostgreSQL's collation depends on the database's locale.
        users.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(users)
    }

    /// One user, if there is one by that name.
    pub async fn user(&self, name: &str) -> anyhow::Result<Option<UserView>> {
        Ok(self.user_row(name).await?.map(|(_, user)| user))
    }

    /// Gives a user another role. Their tokens follow: a token never acts above its
    /// owner's role of the moment.
    pub async fn set_role(&self, name: &str, role: Role) -> Result<UserView, AccountError> {
        self.change_user(
            name,
            "UPDATE users SET role = $1 WHERE name = $2",
            role.as_str(),
        )
        .await
    }

    /// Replaces a user's groups.
    pub async fn set_groups(
        &self,
        name: &str,
        groups: &[String],
    ) -> Result<UserView, AccountError> {
        let groups = group_set(groups)?.join(",");
        self.change_user(
            name,
            "UPDATE users SET group_names = $1 WHERE name = $2",
            &groups,
        )
        .await
    }

    /// Sets a new password and ends all of the user's sessions (the caller starts a new
    /// one if the user changed their own). API tokens are not touched.
    pub async fn set_password(&self, name: &str, password: &str) -> Result<UserView, AccountError> {
        check_new_password(password)?;
        let (id, user) = self.user_row(name).await?.ok_or_else(|| no_user(name))?;
        let hash = hash_password(password).await?;
        let changed = self
            .execute(
                "UPDATE users SET password_hash = $1 WHERE id = $2",
                vec![hash.into(), Value::Int(id)],
            )
            .await
            .with_context(|| format!("cannot change the password of {name:?}"))?;
        if changed == 0 {
            return Err(no_user(name));
        }
        self.end_sessions_of(id)
            .await
            .context("the password was changed, but the old sessions could not be ended")?;
        Ok(user)
    }

    /// Deletes a user, ends their sessions and revokes their tokens.
    pub async fn delete_user(&self, name: &str) -> Result<(), AccountError> {
        let (id, _) = self.user_row(name).await?.ok_or_else(|| no_user(name))?;
        let deleted = self
            .execute("DELETE FROM users WHERE id = $1", vec![Value::Int(id)])
            .await
            .with_context(|| format!("cannot delete the user {name:?}"))?;
        if deleted == 0 {
            return Err(no_user(name));
        }
        // Already useless (they are looked up through the user's row); now also shown so.
        self.end_sessions_of(id).await?;
        self.execute(
            "UPDATE api_tokens SET revoked = 1 WHERE user_id = $1",
            vec![Value::Int(id)],
        )
        .await
        .context("cannot revoke the deleted user's tokens")?;
        Ok(())
    }

    /// The user, if the name and password match. An unknown name costs the same argon2
    /// verification as a known one, so the time taken does not tell which names exist.
    pub async fn check_password(
        &self,
        name: &str,
        password: &str,
    ) -> anyhow::Result<Option<UserView>> {
        if password.len() > MAX_PASSWORD_BYTES {
            return Ok(None);
        }
        let row = self
            .query_opt(
                &format!("SELECT {USER}, password_hash FROM users WHERE name = $1"),
                vec![name.into()],
            )
            .await
            .context("cannot look the user up")?;
        let (user, hash) = match &row {
            Some(row) => (Some(user_from(row)?.1), Some(row.text(5)?.to_owned())),
            None => (None, None),
        };
        let matches = verify_password(password, hash).await?;
        Ok(user.filter(|_| matches))
    }

    /// Replaces the groups a device is in; none takes it out of every group.
    pub async fn set_device_groups(
        &self,
        device: &str,
        groups: &[String],
    ) -> Result<(), AccountError> {
        DeviceId::new(device).map_err(|error| AccountError::Invalid(error.to_string()))?;
        let groups = group_set(groups)?;
        let result = if groups.is_empty() {
            self.execute(
                "DELETE FROM device_groups WHERE device = $1",
                vec![device.into()],
            )
            .await
        } else {
            self.execute(
                "INSERT INTO device_groups (device, group_names) VALUES ($1, $2)
                 ON CONFLICT (device) DO UPDATE SET group_names = excluded.group_names",
                vec![device.into(), groups.join(",").into()],
            )
            .await
        };
        result.with_context(|| format!("cannot set the groups of {device:?}"))?;
        Ok(())
    }

    /// Every device that is in some group, with its groups (sorted).
    pub async fn device_groups(&self) -> anyhow::Result<HashMap<String, Vec<String>>> {
        self.query("SELECT device, group_names FROM device_groups", vec![])
            .await
            .context("cannot read the device groups")?
            .iter()
            .map(|row| Ok((row.text(0)?.to_owned(), split_groups(row.text(1)?))))
            .collect()
    }

    /// Every group a user or a device is in, sorted.
    pub async fn groups(&self) -> anyhow::Result<Vec<String>> {
        let rows = self
            .query(
                "SELECT group_names FROM users UNION SELECT group_names FROM device_groups",
                vec![],
            )
            .await
            .context("cannot read the groups")?;
        let mut all = BTreeSet::new();
        for row in rows {
            all.extend(split_groups(row.text(0)?));
        }
        Ok(all.into_iter().collect())
    }

    /// A user's id and view.
    async fn user_row(&self, name: &str) -> anyhow::Result<Option<(i64, UserView)>> {
        let sql = format!("SELECT {USER} FROM users WHERE name = $1");
        self.query_opt(&sql, vec![name.into()])
            .await
            .with_context(|| format!("cannot look up the user {name:?}"))?
            .map(|row| user_from(&row))
            .transpose()
    }

    /// Sets one column of a user's row (`sql` has `$1` for the value, `$2` for the
    /// name) and gives the user as they are now.
    async fn change_user(
        &self,
        name: &str,
        sql: &str,
        value: &str,
    ) -> Result<UserView, AccountError> {
        let changed = self
            .execute(sql, vec![value.into(), name.into()])
            .await
            .with_context(|| format!("cannot change the user {name:?}"))?;
        if changed == 0 {
            return Err(no_user(name));
        }
        self.user(name).await?.ok_or_else(|| no_user(name))
    }
}

/// A row of [`USER`]'s columns.
fn user_from(row: &Row) -> anyhow::Result<(i64, UserView)> {
    let user = UserView {
        name: row.text(1)?.to_owned(),
        role: role_from(row.text(2)?)?,
        groups: split_groups(row.text(3)?),
        created_ms: row.unsigned(4)?,
    };
    Ok((row.int(0)?, user))
}

fn role_from(text: &str) -> anyhow::Result<Role> {
    text.parse()
        .map_err(|why: String| anyhow::anyhow!("a stored role is wrong: {why}"))
}

fn split_groups(joined: &str) -> Vec<String> {
    joined
        .split(',')
        .filter(|group| !group.is_empty())
        .map(str::to_owned)
        .collect()
}

fn no_user(name: &str) -> AccountError {
    AccountError::NotFound(format!("there is no user named {name:?}"))
}

fn check_user_name(name: &str) -> Result<(), AccountError> {
    if valid_name(name, |c| matches!(c, '.' | '_' | '@' | '-')) {
        Ok(())
    } else {
        Err(AccountError::Invalid(format!(
            "{name:?} cannot be a user name: use 1 to 64 letters (a-z, A-Z), digits, '.', '_', '@' or '-'"
        )))
    }
}

/// The groups, checked, sorted and each once. Group names have no ',' in them, so a
/// comma-separated column holds a list of them unambiguously.
fn group_set(groups: &[String]) -> Result<Vec<String>, AccountError> {
    for group in groups {
        if !valid_name(group, |c| matches!(c, '.' | '_' | '-')) {
            return Err(AccountError::Invalid(format!(
                "{group:?} cannot be a group name: use 1 to 64 letters (a-z, A-Z), digits, '.', '_' or '-'"
            )));
        }
    }
    let set: BTreeSet<&String> = groups.iter().collect();
    Ok(set.into_iter().cloned().collect())
}

fn valid_name(name: &str, also: impl Fn(char) -> bool) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || also(c))
}

fn check_new_password(password: &str) -> Result<(), AccountError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        Err(AccountError::Invalid(format!(
            "a password must be at least {MIN_PASSWORD_CHARS} characters long"
        )))
    } else if password.len() > MAX_PASSWORD_BYTES {
        Err(AccountError::Invalid(format!(
            "a password must be at most {MAX_PASSWORD_BYTES} bytes long"
        )))
    } else {
        Ok(())
    }
}

/// Bytes from the operating system's random source.
pub(crate) fn random_bytes<const N: usize>() -> anyhow::Result<[u8; N]> {
    let mut bytes = [0; N];
    getrandom::fill(&mut bytes)
        .map_err(|error| anyhow::anyhow!("no randomness from the OS: {error}"))?;
    Ok(bytes)
}

/// A positive random id: not guessable from the number of users, and never reused.
fn random_id() -> anyhow::Result<i64> {
    Ok(i64::from_be_bytes(random_bytes()?) & i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rules() {
        for good in ["a", "ada.lovelace@example.org", "x_y-z", &"n".repeat(64)] {
            assert!(check_user_name(good).is_ok(), "{good}");
        }
        for bad in ["", "two words", "é", "a,b", &"n".repeat(65)] {
            assert!(check_user_name(bad).is_err(), "{bad}");
        }
        assert!(group_set(&["a@b".into()]).is_err(), "no '@' in groups");
        assert_eq!(
            group_set(&["b".into(), "a".into(), "b".into()]).unwrap(),
            ["a", "b"]
        );
        assert_eq!(split_groups(""), Vec::<String>::new());
    }

    #[test]
    fn passwords_have_bounds_counted_the_way_people_count() {
        assert!(check_new_password("1234567").is_err());
        assert!(check_new_password("12345678").is_ok());
        assert!(
            check_new_password("ééééééé").is_err(),
            "7 characters, 14 bytes"
        );
        assert!(check_new_password(&"x".repeat(1025)).is_err());
    }
}
