//! Logging in (connection.start-ok with PLAIN): the server account first, checked here
//! at once; anyone else is asked of the [`crate::Authenticator`], which may take its
//! time. While it does, this connection reads nothing more (as RabbitMQ's reader waits
//! for its auth backends), its handshake deadline still runs, and the other
//! connections go on. A refusal is RabbitMQ's 403 whoever refused.

use amq_protocol::protocol::{AMQPClass, connection};
use protocol::policy::Account;
use tokio::{sync::watch, time::Instant};

use super::{ACCESS_REFUSED, Connection, End, Fatal, handshake::Stage, stopped};

/// A login waiting for the authenticator's answer.
pub(super) struct PendingLogin {
    user: String,
    password: String,
    /// The client understands a close before tune (`authentication_failure_close`).
    failure_close: bool,
}

impl Connection {
    /// The PLAIN response (`authzid NUL user NUL password`): logs the server account in
    /// at once, leaves any other login to the authenticator, or refuses it.
    pub(super) fn log_in(&mut self, response: &[u8], failure_close: bool) -> Result<(), Fatal> {
        let mut parts = response.split(|b| *b == 0);
        let (_, user, password) = (parts.next(), parts.next(), parts.next());
        let (Some(user), Some(password)) = (user, password) else {
            self.refuse_login(failure_close);
            return Err(Fatal);
        };
        if self.is_server(user, password) {
            self.logged_in(self.config.user.clone(), Account::Server);
            return Ok(());
        }
        let texts = (std::str::from_utf8(user), std::str::from_utf8(password));
        match (&self.config.authenticator, texts) {
            (Some(_), (Ok(user), Ok(password))) => {
                self.pending_login = Some(PendingLogin {
                    user: user.to_owned(),
                    password: password.to_owned(),
                    failure_close,
                });
                Ok(())
            }
            _ => {
                self.refuse_login(failure_close);
                Err(Fatal)
            }
        }
    }

    /// Whether these are the server account's credentials. As in RabbitMQ, the
    /// well-known guest account works from this machine only.
    fn is_server(&self, user: &[u8], password: &[u8]) -> bool {
        if self.config.user == "guest" && !self.peer.ip().is_loopback() {
            return false;
        }
        // Both compared in full, without stopping at the first difference: how long a
        // refusal takes says nothing about how much of the password was right.
        let same = |a: &[u8], b: &[u8]| {
            a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
        };
        same(user, self.config.user.as_bytes()) & same(password, self.config.password.as_bytes())
    }

    /// Waits for the authenticator's answer to a pending login, then handles what the
    /// client sent meanwhile. `Some` if the connection ends: refused, its handshake not
    /// over by `deadline` (dropped without a word, as RabbitMQ drops it), or the broker
    /// stopping.
    pub(super) async fn await_login(
        &mut self,
        buffer: &mut Vec<u8>,
        deadline: Instant,
        stopping: &mut watch::Receiver<bool>,
    ) -> Option<End> {
        while let Some(login) = self.pending_login.take() {
            let Some(authenticator) = self.config.authenticator.clone() else {
                return Some(End::Closed);
            };
            let asked = authenticator.authenticate(&login.user, &login.password, self.peer.ip());
            let answer = tokio::select! {
                answer = tokio::time::timeout_at(deadline, asked) => answer,
                () = stopped(stopping) => return Some(End::Shutdown),
            };
            match answer {
                Ok(Some(account)) => self.logged_in(login.user, account),
                Ok(None) => {
                    tracing::info!(peer = %self.peer, user = %login.user, "login refused");
                    self.refuse_login(login.failure_close);
                    return Some(End::Closed);
                }
                Err(_) => {
                    tracing::info!(peer = %self.peer, "dropping a connection whose login took longer than its handshake may");
                    return Some(End::Closed);
                }
            }
            if self.drain(buffer).is_err() || self.closing {
                return Some(End::Closed);
            }
        }
        None
    }

    /// A login accepted: the connection is `user`'s, with `account`'s permissions, and
    /// may be closed by user name from now on; on to tune.
    fn logged_in(&mut self, user: String, account: Account) {
        self.session = Some(self.sessions.enter(self.id, &user));
        self.user = user;
        self.account = Some(account);
        self.stage = Stage::Tuning;
        // A device is offered the channels it may open; the client may settle on fewer.
        self.channel_max = match self.limits() {
            Some(limits) => self.config.channel_max.min(limits.channels_per_connection),
            None => self.config.channel_max,
        };
        self.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
                channel_max: self.channel_max,
                frame_max: self.config.frame_max,
                heartbeat: self.config.heartbeat,
            })),
        );
    }

    /// A failed login: as RabbitMQ, the client is told why only if it said it
    /// understands (`failure_close`, the `authentication_failure_close` capability), and
    /// the connection is dropped after `SILENT_CLOSE_DELAY` either way.
    fn refuse_login(&mut self, failure_close: bool) {
        if failure_close {
            self.method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                    reply_code: ACCESS_REFUSED,
                    reply_text: "ACCESS_REFUSED - Login was refused using authentication \
                        mechanism PLAIN. For details see the broker logfile."
                        .into(),
                    class_id: 0,
                    method_id: 0,
                })),
            );
        }
        self.handshake_failed = true;
        self.closing = true;
    }
}
