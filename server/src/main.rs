//! `tether-server`: parses the configuration, sets up logging, and runs the server
//! until Ctrl-C or SIGTERM.

use clap::Parser as _;

/// mimalloc rather than the C library's allocator: the server allocates and frees
/// small buffers on many threads at once (tokio's workers, the database's blocking
/// threads, lapin's I/O thread), where glibc's arenas contend: with mimalloc, commands
/// through the API went from 3,000–3,500 to 4,100 a second on 2 cores (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::init_logging();
    let config = server::Config::parse();
    server::run(config, shutdown_signal()).await
}

/// Resolves on Ctrl-C or SIGTERM, whichever comes first.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for Ctrl-C: {error}");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!("cannot listen for SIGTERM: {error}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}
