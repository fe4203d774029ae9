//! The fleet overview: what Tether is watching, and how to add a device.

use leptos::prelude::*;

/// The landing page. It is useful before WASM loads (all text is server-rendered);
/// once hydrated, the "connect a device" help opens and closes in place.
#[component]
pub fn HomePage() -> impl IntoView {
    let help_open = RwSignal::new(false);
    let hydrated = RwSignal::new(false);
    // Effects run only in the browser, after hydration: the page marks itself
    // so that tests (and curious users) can tell the WASM has taken over.
    Effect::new(move |_| hydrated.set(true));

    view! {
        <section class="card" data-testid="fleet" data-hydrated=move || hydrated.get().then_some("true")>
            <h1>"Fleet"</h1>
            <p class="lead">
                "Tether watches and commands headless devices that connect out to an AMQP broker."
            </p>
            <p class="empty">"No devices have connected yet."</p>
            <button
                type="button"
                aria-expanded=move || help_open.get().to_string()
                aria-controls="connect-help"
                on:click=move |_| help_open.update(|open| *open = !*open)
            >
                {move || if help_open.get() { "Hide how to connect a device" } else { "Show how to connect a device" }}
            </button>
            <div id="connect-help" class="help" role="region" aria-label="How to connect a device" hidden=move || !help_open.get()>
                <p>"Run an agent next to the device, pointed at the broker:"</p>
                <pre><code>"TETHER_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f tether-agent"</code></pre>
            </div>
        </section>
    }
}
