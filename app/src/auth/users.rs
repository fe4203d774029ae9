//! Admins manage users: create them (with a first password to hand over), change their
//! role and device groups.

use leptos::prelude::*;
use leptos_meta::Title;
use protocol::auth::{Role, UserView};

use super::NeedsRole;
use crate::fleet::{AppError, NewUser, UserChange, change_user, create_user, list_users};

#[component]
pub fn UsersPage() -> impl IntoView {
    view! {
        <Title text="Users · Tether" />
        <NeedsRole role=Role::Admin>
            <Users />
        </NeedsRole>
    }
}

/// Groups typed as `a, b`.
fn parse_groups(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(str::to_owned)
        .collect()
}

#[component]
fn Users() -> impl IntoView {
    let users = Resource::new(|| (), |_| list_users());
    let failed = RwSignal::new(None::<AppError>);
    let done = RwSignal::new(None::<String>);
    let (name, password, role, groups) = (
        RwSignal::new(String::new()),
        RwSignal::new(String::new()),
        RwSignal::new(Role::Viewer),
        RwSignal::new(String::new()),
    );
    let create = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let user = NewUser {
            name: name.get_untracked(),
            password: password.get_untracked(),
            role: role.get_untracked(),
            groups: parse_groups(&groups.get_untracked()),
        };
        leptos::task::spawn_local(async move {
            match create_user(user).await {
                Ok(user) => {
                    done.set(Some(format!("Created {} ({}).", user.name, user.role)));
                    failed.set(None);
                    name.set(String::new());
                    password.set(String::new());
                    users.refetch();
                }
                Err(error) => failed.set(Some(error)),
            }
        });
    };
    let change = move |name: String, change: UserChange| {
        leptos::task::spawn_local(async move {
            match change_user(name, change).await {
                Ok(user) => {
                    done.set(Some(format!("Saved {}.", user.name)));
                    failed.set(None);
                    users.refetch();
                }
                Err(error) => failed.set(Some(error)),
            }
        });
    };
    view! {
        <section class="card" aria-labelledby="users-heading">
            <h1 id="users-heading">"Users"</h1>
            {move || done.get().map(|m| view! { <p class="ok" role="status">{m}</p> })}
            {move || failed.get().map(|e| view! { <p class="error" role="alert" data-code=e.code>{e.message}</p> })}
            <Transition fallback=|| view! { <p class="muted">"Loading users…"</p> }>
                {move || users.get().map(|answer| match answer {
                    Err(e) => view! { <p class="error" role="alert" data-code=e.code>{e.message}</p> }.into_any(),
                    Ok(list) => view! {
                        <table class="table" data-testid="users">
                            <thead><tr><th>"Name"</th><th>"Role"</th><th>"Groups"</th></tr></thead>
                            <tbody>{list.into_iter().map(|u| user_row(u, change)).collect_view()}</tbody>
                        </table>
                    }.into_any(),
                })}
            </Transition>
        </section>
        <section class="card" aria-labelledby="new-user-heading">
            <h2 id="new-user-heading">"New user"</h2>
            <form on:submit=create class="stack" data-testid="new-user">
                <label>"Name" <input name="name" required maxlength="64" prop:value=name on:input=move |ev| name.set(event_target_value(&ev)) /></label>
                <label>"First password (8 characters or more; hand it over, they can change it)"
                    <input name="password" type="password" autocomplete="new-password" minlength="8" required prop:value=password on:input=move |ev| password.set(event_target_value(&ev)) />
                </label>
                <label>"Role" <RoleSelect value=role.get_untracked() on_change=move |r| role.set(r) /></label>
                <label>"Device groups (comma-separated)" <input name="groups" prop:value=groups on:input=move |ev| groups.set(event_target_value(&ev)) /></label>
                <button type="submit">"Create user"</button>
            </form>
        </section>
    }
}

#[component]
fn RoleSelect(value: Role, on_change: impl Fn(Role) + 'static) -> impl IntoView {
    view! {
        <select on:change=move |ev| { if let Ok(r) = event_target_value(&ev).parse() { on_change(r) } }>
            {Role::ALL.into_iter().map(|r| view! { <option value=r.as_str() selected=r == value>{r.as_str()}</option> }).collect_view()}
        </select>
    }
}

fn user_row(user: UserView, change: impl Fn(String, UserChange) + Copy + 'static) -> impl IntoView {
    let (for_role, for_groups) = (user.name.clone(), user.name.clone());
    let groups = RwSignal::new(user.groups.join(", "));
    view! {
        <tr data-user=user.name.clone()>
            <td>{user.name.clone()}</td>
            <td><RoleSelect value=user.role on_change=move |role| change(for_role.clone(), UserChange { role: Some(role), ..UserChange::default() }) /></td>
            <td>
                <input aria-label="groups" prop:value=groups on:input=move |ev| groups.set(event_target_value(&ev)) />
                <button type="button" class="link" on:click=move |_| change(for_groups.clone(), UserChange { groups: Some(parse_groups(&groups.get_untracked())), ..UserChange::default() })>"Save groups"</button>
            </td>
        </tr>
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn groups_are_typed_comma_separated() {
        assert_eq!(super::parse_groups(" a, b ,,c"), vec!["a", "b", "c"]);
        assert!(super::parse_groups(" , ").is_empty());
    }
}
