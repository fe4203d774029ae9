//! The embedded broker for a test binary: started once, on a free port, in a runtime of
//! its own so that it outlives each test's runtime.

use std::sync::OnceLock;

/// The URL of this test binary's embedded broker, starting it on first use.
pub fn broker_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().expect("a runtime for the broker");
            runtime.block_on(async move {
                let url = broker::Broker::start(broker::Config::on_free_port())
                    .await
                    .expect("the embedded broker starts");
                sender.send(url).expect("the test waits for the URL");
                // Keeps this runtime, and with it the broker, alive.
                std::future::pending::<()>().await;
            });
        });
        receiver.recv().expect("the embedded broker started")
    })
    .clone()
}
