//! Sessions (a browser's cookie) and API tokens (`Authorization: Bearer …`).
//!
//! Both are 32 random bytes from the operating system, handed out once and kept only
//! as their SHA-256: a secret is found by hashing what a request brings and looking
//! the hash up, so a copy of the database (a backup, a dump) lets no one in, and no
//! secret is ever compared character by character. Both are tied to the user's random
//! id, not their name, and are only good while that user's row exists.

use std::time::Duration;

use anyhow::Context as _;
use protocol::auth::{NewToken, Role, TokenView, UserView};
use sha2::{Digest as _, Sha256};

use super::{AccountError, MAX_NAME, USER, no_user, random_bytes, role_from, user_from};
use crate::{
    Store, now_ms,
    sql::{Row, Value},
};

/// How a token's secret starts, so that it is recognisable in a leaked config file or
/// a secret scanner, and cheap to turn away if it is something else.
const TOKEN_PREFIX: &str = "tth_";
/// Longer than any secret handed out: anything longer is turned away unhashed.
const MAX_SECRET: usize = 128;
/// `last_used_ms` is written at most this often per token, not on every request.
const LAST_USED_EVERY_MS: i64 = 60_000;

/// The columns [`token_from`] reads, in its order, from `api_tokens t` joined (maybe
/// `LEFT`) with the owner's row `u`.
const TOKEN: &str =
    "t.id, t.name, t.owner, t.role, t.created_ms, t.last_used_ms, t.revoked, u.role";

impl Store {
    /// Starts a session for a user; gives its secret, for the cookie.
    pub async fn create_session(&self, name: &str, ttl: Duration) -> anyhow::Result<String> {
        let (id, _) = self
            .user_row(name)
            .await?
            .with_context(|| format!("cannot start a session: {}", no_user(name)))?;
        let now = now_ms();
        // Logins are rare enough to sweep up the sessions that have run out.
        self.execute(
            "DELETE FROM sessions WHERE expires_ms <= $1",
            vec![Value::Int(now)],
        )
        .await
        .context("cannot delete expired sessions")?;
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let secret = hex::encode(random_bytes::<32>()?);
        self.execute(
            "INSERT INTO sessions (secret_hash, user_id, created_ms, expires_ms, revoked)
             VALUES ($1, $2, $3, $4, 0)",
            vec![
                hash(&secret).into(),
                Value::Int(id),
                Value::Int(now),
                Value::Int(now.saturating_add(ttl_ms)),
            ],
        )
        .await
        .context("cannot store the session")?;
        Ok(secret)
    }

    /// The user a session belongs to, if it is still good: not ended, not expired, and
    /// the user not deleted. Their role and groups are those of now.
    pub async fn session(&self, secret: &str) -> anyhow::Result<Option<UserView>> {
        if secret.is_empty() || secret.len() > MAX_SECRET {
            return Ok(None);
        }
        let sql = format!(
            "SELECT {} FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.secret_hash = $1 AND s.revoked = 0 AND s.expires_ms > $2",
            qualified_user()
        );
        let row = self
            .query_opt(&sql, vec![hash(secret).into(), Value::Int(now_ms())])
            .await
            .context("cannot look the session up")?;
        Ok(row
            .map(|row| user_from(&row))
            .transpose()?
            .map(|(_, user)| user))
    }

    /// Ends one session (logging out). An unknown secret is no error.
    pub async fn end_session(&self, secret: &str) -> anyhow::Result<()> {
        self.execute(
            "UPDATE sessions SET revoked = 1 WHERE secret_hash = $1",
            vec![hash(secret).into()],
        )
        .await
        .context("cannot end the session")?;
        Ok(())
    }

    /// Ends every session of a user.
    pub(super) async fn end_sessions_of(&self, user_id: i64) -> anyhow::Result<()> {
        self.execute(
            "UPDATE sessions SET revoked = 1 WHERE user_id = $1",
            vec![Value::Int(user_id)],
        )
        .await
        .context("cannot end the user's sessions")?;
        Ok(())
    }

    /// Makes an API token acting for `owner`, at most with the owner's role. Its secret
    /// is in the answer and nowhere else, ever.
    pub async fn create_token(
        &self,
        owner: &str,
        name: &str,
        role: Role,
    ) -> Result<NewToken, AccountError> {
        check_token_name(name)?;
        let (user_id, user) = self.user_row(owner).await?.ok_or_else(|| no_user(owner))?;
        if role > user.role {
            return Err(AccountError::Invalid(
                "a token cannot have a higher role than its owner".into(),
            ));
        }
        let id = hex::encode(random_bytes::<8>()?);
        let secret = format!("{TOKEN_PREFIX}{id}_{}", hex::encode(random_bytes::<32>()?));
        let token = TokenView {
            id,
            name: name.to_owned(),
            owner: user.name,
            role,
            created_ms: now_ms().max(0) as u64,
            last_used_ms: None,
            revoked: false,
        };
        let inserted = self
            .execute(
                "INSERT INTO api_tokens
                     (id, secret_hash, user_id, owner, name, role, created_ms, last_used_ms, revoked)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, 0) ON CONFLICT DO NOTHING",
                vec![
                    token.id.as_str().into(),
                    hash(&secret).into(),
                    Value::Int(user_id),
                    token.owner.as_str().into(),
                    token.name.as_str().into(),
                    role.as_str().into(),
                    Value::Int(token.created_ms as i64),
                ],
            )
            .await
            .context("cannot store the token")?;
        if inserted == 0 {
            // Two equal 64-bit ids: it would take billions of tokens to see this.
            return Err(
                anyhow::anyhow!("a token with id {} already exists; try again", token.id).into(),
            );
        }
        Ok(NewToken { token, secret })
    }

    /// The owner and the token a secret belongs to, if it is neither revoked nor its
    /// owner deleted. The token's role in the answer is the one in force: its own, or
    /// its owner's if that is now lower.
    pub async fn token(&self, secret: &str) -> anyhow::Result<Option<(UserView, TokenView)>> {
        if !secret.starts_with(TOKEN_PREFIX) || secret.len() > MAX_SECRET {
            return Ok(None);
        }
        let sql = format!(
            "SELECT {TOKEN}, {} FROM api_tokens t JOIN users u ON u.id = t.user_id
             WHERE t.secret_hash = $1 AND t.revoked = 0",
            qualified_user()
        );
        let row = self.query_opt(&sql, vec![hash(secret).into()]).await;
        let Some(row) = row.context("cannot look the token up")? else {
            return Ok(None);
        };
        let mut token = token_from(&row)?;
        let (_, user) = user_from(&Row(row.0[8..].to_vec()))?;
        self.note_use(&mut token).await;
        Ok(Some((user, token)))
    }

    /// Tokens, newest first: all of them, or one owner's.
    pub async fn tokens(&self, owner: Option<&str>) -> anyhow::Result<Vec<TokenView>> {
        let (filter, params) = match owner {
            Some(owner) => ("WHERE t.owner = $1", vec![owner.into()]),
            None => ("", vec![]),
        };
        let sql = format!(
            "SELECT {TOKEN} FROM api_tokens t LEFT JOIN users u ON u.id = t.user_id {filter}
             ORDER BY t.created_ms DESC, t.id"
        );
        self.query(&sql, params)
            .await
            .context("cannot list tokens")?
            .iter()
            .map(token_from)
            .collect()
    }

    /// One token, revoked or not.
    pub async fn token_by_id(&self, id: &str) -> anyhow::Result<Option<TokenView>> {
        let sql = format!(
            "SELECT {TOKEN} FROM api_tokens t LEFT JOIN users u ON u.id = t.user_id WHERE t.id = $1"
        );
        self.query_opt(&sql, vec![id.into()])
            .await
            .with_context(|| format!("cannot look up the token {id:?}"))?
            .map(|row| token_from(&row))
            .transpose()
    }

    /// Revokes a token for good. Revoking one already revoked is no error.
    pub async fn revoke_token(&self, id: &str) -> Result<TokenView, AccountError> {
        let no_token = || AccountError::NotFound(format!("there is no token {id:?}"));
        let revoked = self
            .execute(
                "UPDATE api_tokens SET revoked = 1 WHERE id = $1",
                vec![id.into()],
            )
            .await
            .with_context(|| format!("cannot revoke the token {id:?}"))?;
        if revoked == 0 {
            return Err(no_token());
        }
        self.token_by_id(id).await?.ok_or_else(no_token)
    }

    /// Records that a token was used now, unless that was recorded less than a minute
    /// ago: a script polling every second would otherwise write on every request. A
    /// failure is only logged; it is bookkeeping, not a reason to refuse the request.
    async fn note_use(&self, token: &mut TokenView) {
        let now = now_ms();
        let last = token.last_used_ms.map_or(i64::MIN, |ms| ms as i64);
        if now.saturating_sub(last) < LAST_USED_EVERY_MS {
            return;
        }
        let noted = self.execute(
            "UPDATE api_tokens SET last_used_ms = $1 WHERE id = $2",
            vec![Value::Int(now), token.id.as_str().into()],
        );
        match noted.await {
            Ok(_) => token.last_used_ms = Some(now.max(0) as u64),
            Err(error) => tracing::warn!("cannot record the use of token {}: {error:#}", token.id),
        }
    }
}

/// [`USER`]'s columns, taken from `u`.
fn qualified_user() -> String {
    USER.split(", ")
        .map(|column| format!("u.{column}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A row of [`TOKEN`]'s columns. With no owner row (`u.role` NULL: the owner was
/// deleted), the token shows as revoked, which it is in effect.
fn token_from(row: &Row) -> anyhow::Result<TokenView> {
    let own_role = role_from(row.text(3)?)?;
    let owner_role = match row.0.get(7) {
        Some(Value::Text(role)) => Some(role_from(role)?),
        _ => None,
    };
    Ok(TokenView {
        id: row.text(0)?.to_owned(),
        name: row.text(1)?.to_owned(),
        owner: row.text(2)?.to_owned(),
        role: owner_role.map_or(own_role, |owner| own_role.min(owner)),
        created_ms: row.unsigned(4)?,
        last_used_ms: row.opt_int(5)?.map(|ms| ms.max(0) as u64),
        revoked: row.int(6)? != 0 || owner_role.is_none(),
    })
}

/// A token's name is a label for people ("backup script"): any printable text.
fn check_token_name(name: &str) -> Result<(), AccountError> {
    let length = name.chars().count();
    if (1..=MAX_NAME).contains(&length) && !name.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(AccountError::Invalid(format!(
            "a token's name must be 1 to {MAX_NAME} characters, none of them control characters"
        )))
    }
}

/// What is stored of a secret: its SHA-256, in hex.
fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}
