//! The login page and the first run's page. Both are plain forms posting to the
//! server's `/auth/*` handlers, which answer with a redirect; errors come back as
//! `?error=<code>`.

use leptos::prelude::*;
use leptos_meta::Title;

use super::query;

/// What an `?error=` code means, for people.
fn message(code: &str, why: &str) -> Option<String> {
    Some(match code {
        "" => return None,
        "invalid" if !why.is_empty() => why.to_owned(),
        "invalid" => "Wrong name or password.".into(),
        "throttled" => "Too many failed attempts: wait a little, then try again.".into(),
        "unavailable" => "The server cannot check passwords right now (its database is unavailable). Try again shortly.".into(),
        "logged_out" => return None,
        "mismatch" => "The two passwords differ.".into(),
        "spent" => "This first-run link is no longer valid: a user exists already. Log in instead.".into(),
        other => format!("Something went wrong ({other})."),
    })
}

#[component]
pub fn LoginPage() -> impl IntoView {
    let (error, next) = (query("error"), query("next"));
    view! {
        <Title text="Log in · Tether" />
        <section class="card narrow">
            <h1>"Log in"</h1>
            {move || (error.get() == "logged_out").then(|| view! { <p class="muted" role="status">"You are logged out."</p> })}
            {move || message(&error.get(), "").map(|m| view! { <p class="error" role="alert" data-code=error.get()>{m}</p> })}
            <form method="post" action="/auth/login" class="stack">
                <label>"Name" <input name="name" autocomplete="username" required autofocus /></label>
                <label>"Password" <input name="password" type="password" autocomplete="current-password" required /></label>
                <input type="hidden" name="next" value=move || next.get() />
                <button type="submit">"Log in"</button>
            </form>
            <p class="muted">
                "No account yet? An admin creates one. On a new server, open the first-run link the server printed, or run "
                <code>"tether-server user add NAME --role admin"</code> "."
            </p>
        </section>
    }
}

#[component]
pub fn SetupPage() -> impl IntoView {
    let (error, why, token) = (query("error"), query("why"), query("token"));
    view! {
        <Title text="First run · Tether" />
        <section class="card narrow">
            <h1>"Welcome to Tether"</h1>
            <p>"No user exists yet. Create the first one: it will be an admin, who can then invite others."</p>
            {move || message(&error.get(), &why.get()).map(|m| view! { <p class="error" role="alert" data-code=error.get()>{m}</p> })}
            <form method="post" action="/auth/setup" class="stack">
                <input type="hidden" name="token" value=move || token.get() />
                <label>"Name" <input name="name" autocomplete="username" required autofocus /></label>
                <label>"Password (8 characters or more)" <input name="password" type="password" autocomplete="new-password" minlength="8" required /></label>
                <label>"Password again" <input name="confirm" type="password" autocomplete="new-password" minlength="8" required /></label>
                <button type="submit">"Create the admin account"</button>
            </form>
        </section>
    }
}

#[cfg(test)]
mod tests {
    use super::message;

    #[test]
    fn every_error_code_reads_as_a_sentence() {
        assert_eq!(message("", ""), None);
        assert_eq!(message("logged_out", ""), None);
        assert_eq!(
            message("invalid", "").as_deref(),
            Some("Wrong name or password.")
        );
        assert_eq!(
            message("invalid", "too short").as_deref(),
            Some("too short")
        );
        for code in ["throttled", "unavailable", "mismatch", "spent", "other"] {
            assert!(
                message(code, "").is_some_and(|m| m.ends_with('.')),
                "{code}"
            );
        }
    }
}
