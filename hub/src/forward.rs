//! Cancelling another replica's command. Only the replica that sent a command can
//! cancel it (it alone knows the device's session and inbox, and takes the device's
//! answers), but behind a load balancer a cancel reaches any replica. So a replica asked
//! to cancel a command it only mirrors forwards the cancel to the command's owner:
//!
//! - Straight to the owner's queue on `tether.events` (which every replica names in the
//!   `reply_to` of what it publishes there), through the default exchange, `mandatory`
//!   under publisher confirms (a queue that is gone comes back at once), as AMQP type
//!   [`CANCEL_KIND`], with `reply_to` = the forwarding replica's own events queue and a
//!   fresh `correlation_id`. The owner cancels by the same rules as a cancel made on
//!   it ([`Hub::cancel_here`]) and answers with type [`CANCEL_ANSWER_KIND`]: cancelled,
//!   already ended, unknown (or not its own). The forwarding replica waits
//!   [`FORWARD_ANSWER_WITHIN`] at most; without an answer the cancel fails as
//!   [`CancelError::ReplicaUnavailable`], nothing changed.
//! - Both sides take only messages signed (`user_id`) by the servers' own broker
//!   account: devices can put messages into any queue whose name they know, and must
//!   not cancel commands or answer for a replica. Anything else on this path —
//!   unsigned, another account's, malformed, an answer nobody waits for — is counted
//!   and dropped.
//! - An owner known to be gone (it said goodbye, or has been silent for longer than a
//!   replica that is there ever is) cannot answer: its command ends at once as
//!   `outcome_unknown` ([`crate::ORPHANED`]), as every replica ends such commands once
//!   their deadline is past anyway, and its device, when the command log knows its
//!   inbox, is told to stop.
//! - A command not in memory at all is looked up in the command log, which names its
//!   replica.
//!
//! Who may cancel (the caller may see the device, and is an operator) is decided by the
//! replica the request reached, before any of this.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use lapin::{Confirmation, message::Delivery, options::BasicPublishOptions};
use protocol::{CommandId, api::CommandView};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::{
    command_log::orphaned,
    hub::Hub,
    link::{Link, sender},
    send::{CancelError, Here, Owner},
};

/// The AMQP `type` of a cancel forwarded to the command's owner.
pub(crate) const CANCEL_KIND: &str = "cancel";
/// The AMQP `type` of the owner's answer.
pub(crate) const CANCEL_ANSWER_KIND: &str = "cancel_answer";
/// How long a forwarding replica waits for the owner's answer.
pub(crate) const FORWARD_ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// A cancel forwarded to the replica that sent the command.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ForwardedCancel {
    pub(crate) command_id: CommandId,
}

/// The owner's answer to a forwarded cancel.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub(crate) enum CancelAnswer {
    /// It was running, and is now cancelled (the device told to stop).
    Cancelled { command: CommandView },
    /// It had ended.
    AlreadyEnded { command: CommandView },
    /// The owner does not know it.
    UnknownCommand,
    /// The owner only mirrors it: it is not the owner.
    NotOurs,
}

/// Forwarded cancels waiting for their answer, by correlation id.
#[derive(Debug, Default)]
pub(crate) struct Forwarded(Mutex<HashMap<String, oneshot::Sender<CancelAnswer>>>);

impl Forwarded {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<CancelAnswer>>> {
        self.0
            .lock()
            .expect("no code panics while holding the forwarded lock")
    }
}

/// Forgets a forwarded cancel however its caller ends (answered, timed out, dropped).
struct Waiting<'a>(&'a Hub, String);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.inner.forwarded.lock().remove(&self.1);
    }
}

impl Hub {
    /// Cancels `view`, a command of replica `owner`: forwarded to it if it is there, ended
    /// as an orphan if it is gone.
    pub(crate) async fn cancel_theirs(
        &self,
        view: CommandView,
        owner: &str,
    ) -> Result<CommandView, CancelError> {
        match self.owner(owner) {
            Owner::Present(Some(queue)) => self.forward_cancel(view.id, owner, &queue).await,
            Owner::Present(None) | Owner::Unsure => Err(CancelError::ReplicaUnavailable(view.id)),
            Owner::Gone => self.cancel_orphan(view, owner).await,
        }
    }

    /// A cancel of a command this replica does not hold in memory: the command log
    /// says whether it exists, whether it ended, and whose it is.
    pub(crate) async fn cancel_logged(&self, id: &CommandId) -> Result<CommandView, CancelError> {
        let Some(log) = &self.inner.config.command_log else {
            return Err(CancelError::UnknownCommand(id.clone()));
        };
        let logged = match log.store.logged_command(&id.0).await {
            Ok(Some(logged)) => logged,
            Ok(None) => return Err(CancelError::UnknownCommand(id.clone())),
            Err(error) => {
                tracing::warn!(command = %id, "cannot read the command log to cancel: {error:#}");
                return Err(CancelError::StoreUnavailable);
            }
        };
        if logged.view.status.is_terminal() {
            return Err(CancelError::AlreadyEnded(Box::new(logged.view)));
        }
        self.cancel_theirs(logged.view, &logged.replica).await
    }

    /// Forwards the cancel of command `id` to replica `owner`, which takes requests on
    /// `queue`, and returns its answer.
    async fn forward_cancel(
        &self,
        id: CommandId,
        owner: &str,
        queue: &str,
    ) -> Result<CommandView, CancelError> {
        let link = self.link().ok_or(CancelError::BrokerUnavailable)?;
        let correlation = format!("{:032x}", fastrand::u128(..));
        let (answered, answer) = oneshot::channel();
        self.inner
            .forwarded
            .lock()
            .insert(correlation.clone(), answered);
        let _waiting = Waiting(self, correlation.clone());
        let request = ForwardedCancel {
            command_id: id.clone(),
        };
        let properties = link
            .properties()
            .with_app_id(self.inner.replica_id.as_str().into())
            .with_type(CANCEL_KIND.into())
            .with_reply_to(link.events_queue.as_str().into())
            .with_correlation_id(correlation.as_str().into());
        let published = link
            .channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &protocol::encode(&request),
                properties,
            )
            .await;
        let confirmed = match published {
            Ok(confirm) => confirm.await,
            Err(error) => Err(error),
        };
        match confirmed {
            Ok(Confirmation::Ack(None) | Confirmation::NotRequested) => {}
            Ok(Confirmation::Ack(Some(_))) => {
                // Its queue is gone: it stopped or lost the broker a moment ago.
                tracing::info!(command = %id, %owner, "the replica that sent the command is gone; cannot forward its cancel");
                return Err(CancelError::ReplicaUnavailable(id));
            }
            Ok(Confirmation::Nack(_)) => return Err(CancelError::ReplicaUnavailable(id)),
            Err(error) => {
                tracing::warn!(command = %id, "cannot forward a cancel: {error}");
                return Err(CancelError::BrokerUnavailable);
            }
        }
        let answer = match tokio::time::timeout(FORWARD_ANSWER_WITHIN, answer).await {
            Ok(Ok(answer)) => answer,
            _ => {
                tracing::warn!(command = %id, %owner, "the replica that sent the command did not answer its cancel within {FORWARD_ANSWER_WITHIN:?}");
                return Err(CancelError::ReplicaUnavailable(id));
            }
        };
        match answer {
            CancelAnswer::Cancelled { command } if command.id == id => {
                self.mirror_answer(&command, owner);
                Ok(command)
            }
            CancelAnswer::AlreadyEnded { command } if command.id == id => {
                self.mirror_answer(&command, owner);
                Err(CancelError::AlreadyEnded(Box::new(command)))
            }
            CancelAnswer::UnknownCommand => Err(CancelError::UnknownCommand(id)),
            other => {
                tracing::warn!(command = %id, %owner, "the replica asked to cancel answered {other:?}");
                Err(CancelError::ReplicaUnavailable(id))
            }
        }
    }

    /// The owner's word on its command, taken at once (its shared change may come a
    /// moment later), so that whoever asks this replica next sees it.
    fn mirror_answer(&self, command: &CommandView, owner: &str) {
        let mut state = self.state();
        if let Some(changed) = state.commands.mirror(command.clone(), owner) {
            self.broadcast_commands(&state, &[changed]);
        }
    }

    /// Ends `view`, a command of replica `owner`, which is gone, as `outcome_unknown`:
    /// logged (under the owner's name, as the sweep of vanished replicas' commands
    /// does), told to listeners and replicas; its device told to stop when the log
    /// knows its inbox.
    async fn cancel_orphan(
        &self,
        view: CommandView,
        owner: &str,
    ) -> Result<CommandView, CancelError> {
        let from_view = |view: CommandView| store::LoggedCommand {
            view,
            replica: owner.to_owned(),
            session_id: String::new(),
            inbox: String::new(),
            version: 0,
        };
        let (mut current, log) = match &self.inner.config.command_log {
            None => (from_view(view.clone()), None),
            Some(log) => match log.store.logged_command(&view.id.0).await {
                Ok(Some(logged)) => (logged, Some(log)),
                // Known from its shared changes only (its replica kept no log).
                Ok(None) => (from_view(view.clone()), None),
                Err(error) => {
                    tracing::warn!(command = %view.id, "cannot read the command log to cancel: {error:#}");
                    return Err(CancelError::StoreUnavailable);
                }
            },
        };
        // The later of what the log and the shared changes say.
        if view.supersedes(&current.view) {
            current.view = view;
        }
        let Some(orphan) = orphaned(current.clone()) else {
            self.mirror_orphans(std::slice::from_ref(&current)).await;
            let ended = self.command(&current.view.id).unwrap_or(current.view);
            return Err(CancelError::AlreadyEnded(Box::new(ended)));
        };
        if let Some(log) = log
            && let Err(error) = log.store.log_commands(vec![orphan.clone()]).await
        {
            tracing::warn!(command = %orphan.view.id, "cannot end an orphaned command in the log: {error:#}");
            return Err(CancelError::StoreUnavailable);
        }
        tracing::warn!(command = %orphan.view.id, %owner, "cancelled a command of a vanished replica: its outcome is unknown");
        self.mirror_orphans(std::slice::from_ref(&orphan)).await;
        if !orphan.inbox.is_empty() {
            self.tell_device_to_stop(&orphan.view.id, &orphan.inbox)
                .await;
        }
        Err(CancelError::Orphaned(Box::new(orphan.view)))
    }

    /// A message another replica sent this one directly (on its events queue): a
    /// forwarded cancel or the answer to one. Taken only from the servers' own account;
    /// anything else is counted and dropped.
    pub(crate) fn on_direct(&self, delivery: &Delivery, kind: &str) {
        let Some(link) = self.link() else { return };
        if sender(delivery) != Some(link.user.as_str()) {
            let from = sender(delivery).unwrap_or("(no user_id)");
            return self.dropped(
                &self.inner.stats.impostors,
                &format!("a replica's {kind} message sent by account {from:?}"),
            );
        }
        let Some(correlation) = delivery.properties.correlation_id().as_ref() else {
            return self.dropped(
                &self.inner.stats.malformed,
                &format!("a replica's {kind} message without a correlation id"),
            );
        };
        let correlation = correlation.to_string();
        if kind == CANCEL_ANSWER_KIND {
            return self.on_cancel_answer(delivery, &correlation);
        }
        let Some(reply_to) = delivery.properties.reply_to().as_ref() else {
            return self.dropped(
                &self.inner.stats.malformed,
                "a forwarded cancel without reply_to",
            );
        };
        let request = match protocol::decode::<ForwardedCancel>(&delivery.data) {
            Ok(request) => request,
            Err(error) => {
                return self.dropped(
                    &self.inner.stats.malformed,
                    &format!("a forwarded cancel: {error}"),
                );
            }
        };
        let (hub, reply_to) = (self.clone(), reply_to.to_string());
        self.inner.shutdown.spawn(async move {
            let answer = match hub.cancel_here(&request.command_id).await {
                Here::Cancelled(command) => CancelAnswer::Cancelled { command },
                Here::Ended(command) => CancelAnswer::AlreadyEnded { command },
                Here::Unknown => CancelAnswer::UnknownCommand,
                Here::Theirs { .. } => CancelAnswer::NotOurs,
            };
            hub.answer(&link, &reply_to, &correlation, &answer).await;
        });
    }

    /// Sends the answer to a forwarded cancel. Best effort: a forwarding replica that
    /// is gone has nobody to tell; one that gets no answer says so to its caller.
    async fn answer(&self, link: &Link, reply_to: &str, correlation: &str, answer: &CancelAnswer) {
        let properties = link
            .properties()
            .with_app_id(self.inner.replica_id.as_str().into())
            .with_type(CANCEL_ANSWER_KIND.into())
            .with_correlation_id(correlation.into());
        if let Err(error) = link
            .channel
            .basic_publish(
                "".into(),
                reply_to.into(),
                BasicPublishOptions::default(),
                &protocol::encode(answer),
                properties,
            )
            .await
        {
            tracing::debug!("cannot answer a forwarded cancel: {error}");
        }
    }

    fn on_cancel_answer(&self, delivery: &Delivery, correlation: &str) {
        let answer = match protocol::decode::<CancelAnswer>(&delivery.data) {
            Ok(answer) => answer,
            Err(error) => {
                return self.dropped(
                    &self.inner.stats.malformed,
                    &format!("the answer to a forwarded cancel: {error}"),
                );
            }
        };
        let waiting = self.inner.forwarded.lock().remove(correlation);
        match waiting {
            Some(waiting) => {
                let _ = waiting.send(answer);
            }
            None => self.dropped(
                &self.inner.stats.late,
                "the answer to a forwarded cancel nobody waits for (any more)",
            ),
        }
    }
}
