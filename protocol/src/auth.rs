//! Who may do what: roles, and the views of users, API tokens, provisioned devices and
//! audit entries that the API and the UI share.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// What a person or a token may do. Ordered: each role may do all the one below may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sees devices, readings and commands.
    Viewer,
    /// Also sends and cancels commands.
    Operator,
    /// Also manages users, groups, devices, tokens, and reads the audit trail.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Whether this role may send and cancel commands.
    pub fn may_command(self) -> bool {
        self >= Role::Operator
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "{other:?} is not a role: viewer, operator or admin"
            )),
        }
    }
}

/// The person (or a person's token) a request comes from, as the UI shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Me {
    pub name: String,
    /// The role in force: a token's own, which is never above its owner's.
    pub role: Role,
    /// The device groups this user was granted (admins see every device anyway).
    pub groups: Vec<String>,
}

/// A user, as admins see them. Never carries the password or its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserView {
    pub name: String,
    pub role: Role,
    pub groups: Vec<String>,
    pub created_ms: u64,
}

/// An API token, without its secret (which is shown once, at creation, and stored only
/// as a hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenView {
    pub id: String,
    pub name: String,
    /// The user it acts for.
    pub owner: String,
    pub role: Role,
    pub created_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_ms: Option<u64>,
    pub revoked: bool,
}

/// A token just created: its secret, to use as `Authorization: Bearer <secret>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewToken {
    pub token: TokenView,
    pub secret: String,
}

/// One entry of the audit trail: who did what to what, from where, and how it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    /// Its place in the chain: 1, 2, 3… with no gaps.
    pub seq: u64,
    pub ts_ms: u64,
    /// The user's name (with ` (token <id>)` when one of their API tokens acted), or the
    /// name a failed login claimed.
    pub actor: String,
    /// The client's address.
    pub source: String,
    /// What was done: `login`, `login_failed`, `logout`, `command_sent`, `user_created`…
    pub action: String,
    /// What it was done to: a device id, a user name, a token id; empty if nothing.
    pub target: String,
    /// Anything else worth keeping (the command and its arguments, the new role…).
    pub detail: String,
}

/// A device allowed to connect to the broker with a credential of its own, without
/// that credential: its secret is shown once, when made or rotated, and stored only as
/// an argon2 hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProvisionedDevice {
    pub id: String,
    pub created_ms: u64,
    /// When the secret was last replaced; `None` if it is still the first one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_ms: Option<u64>,
    /// Its last hello, if servers dropped it (it stays offline until it sends one that
    /// keeps the protocol's rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hello_refused: Option<crate::api::RefusedHello>,
}

/// A device credential just made or rotated: the device connects as user `id` with
/// password `secret`. `amqp_url` is the broker URL with both filled in, ready for the
/// device's `TETHER_AMQP_URL`; absent when the server's own broker URL cannot carry a
/// credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceCredential {
    pub id: String,
    pub secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amqp_url: Option<String>,
}

/// Whether the audit chain is intact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditCheck {
    /// How many entries were checked.
    pub entries: u64,
    /// The first entry that does not match the chain (altered, or one before it
    /// deleted), and why; `None` if the whole chain holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broken_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_parse_back() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
            assert_eq!(serde_json::to_string(&role).unwrap(), format!("\"{role}\""));
        }
        assert!("root".parse::<Role>().is_err());
        assert!(!Role::Viewer.may_command() && Role::Operator.may_command());
    }
}
