//! The user's own page: who they are, their password (a plain form), and their API
//! tokens: created with a role no higher than theirs, the secret shown once, revoked
//! with a click.

use leptos::prelude::*;
use leptos_meta::Title;
use protocol::auth::{NewToken, Role, TokenView};

use super::{query, use_me};
use crate::fleet::{AppError, create_token, list_tokens, revoke_token};

fn password_message(code: &str, why: &str) -> Option<(bool, String)> {
    Some(match code {
        "" => return None,
        "changed" => (
            true,
            "Your password was changed; every other session was logged out.".into(),
        ),
        "wrong_password" => (false, "The current password is wrong.".into()),
        "mismatch" => (false, "The two new passwords differ.".into()),
        "invalid" => (false, why.to_owned()),
        "token" => (false, "An API token cannot change a password.".into()),
        _ => (
            false,
            "The password could not be changed; try again shortly.".into(),
        ),
    })
}

#[component]
pub fn AccountPage() -> impl IntoView {
    let me = use_me();
    let (error, why) = (query("error"), query("why"));
    view! {
        <Title text="Account · Tether" />
        <section class="card">
            <h1>"Account"</h1>
            <Transition fallback=|| ()>
                {move || me.get().map(|me| view! {
                    <dl class="facts">
                        <dt>"Name"</dt><dd>{me.name.clone()}</dd>
                        <dt>"Role"</dt><dd data-testid="role">{me.role.as_str()}</dd>
                        <dt>"Groups"</dt><dd>{if me.groups.is_empty() { "none".to_owned() } else { me.groups.join(", ") }}</dd>
                    </dl>
                })}
            </Transition>
        </section>
        <section class="card" aria-labelledby="password-heading">
            <h2 id="password-heading">"Password"</h2>
            {move || password_message(&error.get(), &why.get()).map(|(ok, m)| view! {
                <p class=if ok { "ok" } else { "error" } role="alert" data-code=error.get()>{m}</p>
            })}
            <form method="post" action="/auth/password" class="stack">
                <label>"Current password" <input name="current" type="password" autocomplete="current-password" required /></label>
                <label>"New password (8 characters or more)" <input name="password" type="password" autocomplete="new-password" minlength="8" required /></label>
                <label>"New password again" <input name="confirm" type="password" autocomplete="new-password" minlength="8" required /></label>
                <button type="submit">"Change password"</button>
            </form>
        </section>
        <Tokens />
    }
}

/// The user's API tokens (an admin's: everyone's).
#[component]
fn Tokens() -> impl IntoView {
    let me = use_me();
    let tokens = Resource::new(|| (), |_| list_tokens());
    let created = RwSignal::new(None::<NewToken>);
    let failed = RwSignal::new(None::<AppError>);
    let name = RwSignal::new(String::new());
    let role = RwSignal::new(Role::Viewer);
    let create = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let (name_now, role_now) = (name.get_untracked(), role.get_untracked());
        leptos::task::spawn_local(async move {
            match create_token(name_now, role_now).await {
                Ok(token) => {
                    created.set(Some(token));
                    failed.set(None);
                    name.set(String::new());
                    tokens.refetch();
                }
                Err(error) => failed.set(Some(error)),
            }
        });
    };
    let revoke = move |id: String| {
        leptos::task::spawn_local(async move {
            match revoke_token(id).await {
                Ok(_) => tokens.refetch(),
                Err(error) => failed.set(Some(error)),
            }
        });
    };
    view! {
        <section class="card" aria-labelledby="tokens-heading">
            <h2 id="tokens-heading">"API tokens"</h2>
            <p class="muted">"For scripts: send " <code>"Authorization: Bearer <token>"</code> " to " <code>"/api/v1"</code> ". A token acts for you, with a role no higher than yours."</p>
            {move || created.get().map(|token| view! {
                <div class="ok" role="status">
                    <p>"Token \"" {token.token.name.clone()} "\" created. Copy it now: it is not shown again."</p>
                    <pre data-testid="token-secret">{token.secret.clone()}</pre>
                </div>
            })}
            {move || failed.get().map(|e| view! { <p class="error" role="alert" data-code=e.code>{e.message}</p> })}
            <form on:submit=create class="row">
                <label>"Name" <input required maxlength="64" prop:value=name on:input=move |ev| name.set(event_target_value(&ev)) /></label>
                <label>"Role"
                    <select on:change=move |ev| { if let Ok(r) = event_target_value(&ev).parse() { role.set(r) } }>
                        <Transition fallback=|| ()>
                            {move || Role::ALL.into_iter().filter(|r| me.has(*r)).map(|r| view! {
                                <option value=r.as_str() selected=move || role.get() == r>{r.as_str()}</option>
                            }).collect_view()}
                        </Transition>
                    </select>
                </label>
                <button type="submit">"Create token"</button>
            </form>
            <Transition fallback=|| view! { <p class="muted">"Loading tokens…"</p> }>
                {move || tokens.get().map(|answer| match answer {
                    Err(e) => view! { <p class="error" role="alert" data-code=e.code>{e.message}</p> }.into_any(),
                    Ok(list) if list.is_empty() => view! { <p class="muted">"No tokens yet."</p> }.into_any(),
                    Ok(list) => view! {
                        <table class="table" data-testid="tokens">
                            <thead><tr><th>"Name"</th><th>"Owner"</th><th>"Role"</th><th>"Last used"</th><th></th></tr></thead>
                            <tbody>
                                {list.into_iter().map(|t| token_row(t, revoke)).collect_view()}
                            </tbody>
                        </table>
                    }.into_any(),
                })}
            </Transition>
        </section>
    }
}

fn token_row(token: TokenView, revoke: impl Fn(String) + Copy + 'static) -> impl IntoView {
    let id = token.id.clone();
    view! {
        <tr data-token=token.id.clone() data-revoked=token.revoked.to_string()>
            <td>{token.name.clone()}</td>
            <td>{token.owner.clone()}</td>
            <td>{token.role.as_str()}</td>
            <td>{token.last_used_ms.map_or_else(|| "never".to_owned(), crate::auth::audit::when)}</td>
            <td>{if token.revoked {
                view! { <span class="muted">"revoked"</span> }.into_any()
            } else {
                view! { <button type="button" class="link" on:click=move |_| revoke(id.clone())>"Revoke"</button> }.into_any()
            }}</td>
        </tr>
    }
}

#[cfg(test)]
mod tests {
    use super::password_message;

    #[test]
    fn the_password_form_says_what_happened() {
        assert_eq!(password_message("", ""), None);
        assert!(password_message("changed", "").is_some_and(|(ok, _)| ok));
        assert_eq!(
            password_message("invalid", "too short"),
            Some((false, "too short".into()))
        );
        assert!(password_message("wrong_password", "").is_some_and(|(ok, _)| !ok));
    }
}
