//! `tether-agent`: runs one device, or a simulated fleet, against a broker.
//!
//! ```text
//! tether-agent --device-id boiler-1 --kind thermostat
//! tether-agent --simulate 50 --kind mixed --id-prefix lab
//! ```

use std::{sync::Arc, time::Duration};

use agent::simulate::{Kind, Simulated};
use clap::Parser as _;
use protocol::DeviceId;
use tokio::sync::watch;

/// Settings, as flags or environment variables.
#[derive(Debug, clap::Parser)]
#[command(
    name = "tether-agent",
    version,
    about = "A Tether device agent with simulated device kinds"
)]
struct Args {
    /// The broker to connect out to.
    #[arg(
        long,
        env = "TETHER_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,

    /// The device's id (with --simulate: the prefix of each device's id).
    #[arg(long, env = "TETHER_DEVICE_ID", default_value = "sim")]
    device_id: String,

    /// What to simulate; `mixed` cycles through every kind.
    #[arg(long, env = "TETHER_DEVICE_KIND", default_value = "mixed")]
    kind: KindArg,

    /// Run this many devices, each with its own connection, named `<device-id>-<kind>-<n>`.
    #[arg(long, env = "TETHER_SIMULATE")]
    simulate: Option<usize>,

    /// Heartbeat interval in milliseconds.
    #[arg(long, env = "TETHER_HEARTBEAT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    heartbeat_ms: u64,

    /// How often to publish readings, in milliseconds; 0 for never.
    #[arg(long, env = "TETHER_TELEMETRY_MS", default_value_t = 5000)]
    telemetry_ms: u64,

    /// The fastest a server may ask readings to come while someone watches, in ms.
    #[arg(long, env = "TETHER_TELEMETRY_FASTEST_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..))]
    telemetry_fastest_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum KindArg {
    Thermostat,
    Switch,
    Gateway,
    Mixed,
}

impl KindArg {
    fn pick(self, n: usize) -> Kind {
        match self {
            Self::Thermostat => Kind::Thermostat,
            Self::Switch => Kind::Switch,
            Self::Gateway => Kind::Gateway,
            Self::Mixed => Kind::ALL[n % Kind::ALL.len()],
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::init_logging();
    let args = Args::parse();
    let devices: Vec<(DeviceId, Kind)> = match args.simulate {
        None => vec![(DeviceId::new(&args.device_id)?, args.kind.pick(0))],
        Some(count) => (1..=count)
            .map(|n| {
                let kind = args.kind.pick(n - 1);
                Ok((
                    DeviceId::new(format!("{}-{}-{n}", args.device_id, kind.name()))?,
                    kind,
                ))
            })
            .collect::<anyhow::Result<_>>()?,
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut agents = tokio::task::JoinSet::new();
    for (device_id, kind) in devices {
        let mut config = agent::Config::new(args.amqp_url.clone(), device_id, kind.name());
        config.heartbeat = Duration::from_millis(args.heartbeat_ms);
        config.telemetry =
            (args.telemetry_ms > 0).then(|| Duration::from_millis(args.telemetry_ms));
        config.telemetry_fastest = Duration::from_millis(args.telemetry_fastest_ms);
        let mut stop = stop_rx.clone();
        agents.spawn(agent::run(
            config,
            Arc::new(Simulated::new(kind)),
            async move {
                let _ = stop.wait_for(|stop| *stop).await;
            },
        ));
    }
    shutdown_signal().await;
    let _ = stop_tx.send(true);
    while let Some(result) = agents.join_next().await {
        result??;
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        Some(()) = async { match terminate.as_mut() { Some(t) => t.recv().await, None => std::future::pending().await } } => {}
    }
}
