//! The WASM entry point: hydrates the page the server rendered. Nothing else lives here.

// Leptos's view types nest deeply; the hydrate build needs more room to lay them out.
#![recursion_limit = "256"]

/// Called by the generated JS once the WASM module has loaded.
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn hydrate() {
    console_error_panic_hook::set_once();
    // Lazy: some pages' code is fetched on demand (`app::routes`), and hydration waits
    // for the shown page's.
    leptos::mount::hydrate_lazy(app::App);
}
