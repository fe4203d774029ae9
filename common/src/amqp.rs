//! Tether's exchanges ([`protocol::names::EXCHANGES`]) declared on a lapin channel.

use anyhow::Context as _;
use lapin::{Channel, ExchangeKind, options::ExchangeDeclareOptions, types::FieldTable};
use protocol::names::{EXCHANGES, ExchangeType};

/// Declares one of Tether's exchanges (durable, of its listed type).
///
/// # Panics
/// If `name` is not one of [`EXCHANGES`]: a mistake in the caller's code.
pub async fn declare_exchange(channel: &Channel, name: &str) -> anyhow::Result<()> {
    let (_, kind) = EXCHANGES
        .iter()
        .find(|(known, _)| *known == name)
        .unwrap_or_else(|| panic!("{name} is not one of Tether's exchanges"));
    let kind = match kind {
        ExchangeType::Topic => ExchangeKind::Topic,
        ExchangeType::Fanout => ExchangeKind::Fanout,
    };
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(name.into(), kind, durable, FieldTable::default())
        .await
        .with_context(|| format!("cannot declare exchange {name}"))
}

/// Declares every one of Tether's exchanges.
pub async fn declare_exchanges(channel: &Channel) -> anyhow::Result<()> {
    for (name, _) in EXCHANGES {
        declare_exchange(channel, name).await?;
    }
    Ok(())
}
