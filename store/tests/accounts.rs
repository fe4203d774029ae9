//! Users, passwords, sessions, API tokens and device groups, each case on SQLite, on
//! PostgreSQL and in memory (see `support`).

#[macro_use]
mod support;

use std::time::Duration;

use protocol::auth::Role;
use store::{AccountError, Store};
use support::Db;

const PASSWORD: &str = "correct horse";

fn groups(names: &[&str]) -> Vec<String> {
    names.iter().map(|name| name.to_string()).collect()
}

async fn users_are_added_listed_and_found(db: &Db) {
    let store = &db.store;
    assert_eq!(store.user_count().await.unwrap(), 0);
    let bob = store
        .add_user(
            "bob",
            PASSWORD,
            Role::Operator,
            &groups(&["west", "east", "west"]),
        )
        .await
        .unwrap();
    assert_eq!((bob.name.as_str(), bob.role), ("bob", Role::Operator));
    assert_eq!(bob.groups, ["east", "west"], "sorted, each once");
    assert!(bob.created_ms > 1_700_000_000_000);
    store
        .add_user("Alice@example.org", PASSWORD, Role::Admin, &[])
        .await
        .unwrap();
    assert_eq!(store.user_count().await.unwrap(), 2);
    let names: Vec<_> = store
        .users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(names, ["Alice@example.org", "bob"]);
    assert_eq!(store.user("bob").await.unwrap(), Some(bob.clone()));
    assert_eq!(store.user("carol").await.unwrap(), None);

    let bob = store.set_role("bob", Role::Viewer).await.unwrap();
    assert_eq!(bob.role, Role::Viewer);
    let bob = store.set_groups("bob", &groups(&["north"])).await.unwrap();
    assert_eq!(bob.groups, ["north"]);
    assert_eq!(store.user("bob").await.unwrap(), Some(bob));
    let bob = store.set_groups("bob", &[]).await.unwrap();
    assert!(bob.groups.is_empty());

    store.delete_user("bob").await.unwrap();
    assert_eq!(store.user("bob").await.unwrap(), None);
    assert_eq!(store.user_count().await.unwrap(), 1);
    // The name is free again.
    store
        .add_user("bob", PASSWORD, Role::Viewer, &[])
        .await
        .unwrap();
}

async fn bad_input_is_refused_with_a_reason(db: &Db) {
    let store = &db.store;
    store
        .add_user("bob", PASSWORD, Role::Viewer, &[])
        .await
        .unwrap();
    let error = store
        .add_user("bob", "another password", Role::Admin, &[])
        .await
        .unwrap_err();
    assert!(matches!(error, AccountError::Exists(_)), "{error:?}");
    assert!(error.to_string().contains("already exists"), "{error}");

    for name in ["", "two words", "zoë", "a/b", &"n".repeat(65)] {
        let error = store
            .add_user(name, PASSWORD, Role::Viewer, &[])
            .await
            .unwrap_err();
        assert!(
            matches!(error, AccountError::Invalid(_)),
            "{name:?}: {error:?}"
        );
        assert!(
            error.to_string().contains("cannot be a user name"),
            "{error}"
        );
    }
    let error = store
        .add_user("carol", "short", Role::Viewer, &[])
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("at least 8 characters"),
        "{error}"
    );
    let error = store
        .add_user("carol", &"x".repeat(1025), Role::Viewer, &[])
        .await
        .unwrap_err();
    assert!(error.to_string().contains("at most 1024 bytes"), "{error}");
    let error = store
        .add_user("carol", PASSWORD, Role::Viewer, &groups(&["ok", "not ok"]))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("cannot be a group name"),
        "{error}"
    );
    assert_eq!(store.user_count().await.unwrap(), 1, "nothing was added");
    assert!(matches!(
        store.set_groups("bob", &groups(&["a,b"])).await,
        Err(AccountError::Invalid(_))
    ));
    assert!(matches!(
        store.set_password("bob", "short").await,
        Err(AccountError::Invalid(_))
    ));

    for result in [
        store.set_role("nobody", Role::Admin).await,
        store.set_groups("nobody", &[]).await,
        store.set_password("nobody", PASSWORD).await,
    ] {
        assert!(
            matches!(result, Err(AccountError::NotFound(_))),
            "{result:?}"
        );
    }
    let error = store.delete_user("nobody").await.unwrap_err();
    assert_eq!(error.to_string(), "there is no user named \"nobody\"");
}

async fn passwords_are_checked(db: &Db) {
    let store = &db.store;
    store
        .add_user("bob", PASSWORD, Role::Operator, &[])
        .await
        .unwrap();
    let bob = store.check_password("bob", PASSWORD).await.unwrap();
    assert_eq!(bob.map(|u| u.name), Some("bob".into()));
    assert_eq!(
        store.check_password("bob", "Correct horse").await.unwrap(),
        None
    );
    assert_eq!(store.check_password("bob", "").await.unwrap(), None);
    assert_eq!(
        store.check_password("nobody", PASSWORD).await.unwrap(),
        None
    );
    assert_eq!(store.check_password("", "").await.unwrap(), None);
    assert_eq!(
        store
            .check_password("bob", &"x".repeat(100_000))
            .await
            .unwrap(),
        None
    );

    store.set_password("bob", "battery staple").await.unwrap();
    assert_eq!(store.check_password("bob", PASSWORD).await.unwrap(), None);
    assert!(
        store
            .check_password("bob", "battery staple")
            .await
            .unwrap()
            .is_some()
    );
}

async fn sessions_last_until_ended_expired_or_superseded(db: &Db) {
    let store = &db.store;
    store
        .add_user("bob", PASSWORD, Role::Operator, &groups(&["east"]))
        .await
        .unwrap();
    let hour = Duration::from_secs(3_600);
    let secret = store.create_session("bob", hour).await.unwrap();
    assert_eq!(secret.len(), 64, "32 bytes in hex");
    let other = store.create_session("bob", hour).await.unwrap();
    assert_ne!(secret, other);
    let bob = store
        .session(&secret)
        .await
        .unwrap()
        .expect("a live session");
    assert_eq!((bob.name.as_str(), bob.role), ("bob", Role::Operator));
    assert_eq!(bob.groups, ["east"]);
    // The role is the user's current one.
    store.set_role("bob", Role::Viewer).await.unwrap();
    assert_eq!(
        store.session(&secret).await.unwrap().unwrap().role,
        Role::Viewer
    );

    store.end_session(&secret).await.unwrap();
    assert_eq!(store.session(&secret).await.unwrap(), None);
    assert!(
        store.session(&other).await.unwrap().is_some(),
        "only that one ended"
    );
    store.end_session("never issued").await.unwrap();
    assert_eq!(store.session("").await.unwrap(), None);
    assert_eq!(store.session(&"f".repeat(64)).await.unwrap(), None);

    let brief = store
        .create_session("bob", Duration::from_millis(50))
        .await
        .unwrap();
    assert!(store.session(&brief).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(store.session(&brief).await.unwrap(), None, "expired");

    // A new password ends every session; a new one can start after it.
    store.set_password("bob", "battery staple").await.unwrap();
    assert_eq!(store.session(&other).await.unwrap(), None);
    let fresh = store.create_session("bob", hour).await.unwrap();
    assert!(store.session(&fresh).await.unwrap().is_some());
    // Deleting the user ends theirs too, and a namesake made later does not get them.
    store.delete_user("bob").await.unwrap();
    assert_eq!(store.session(&fresh).await.unwrap(), None);
    store
        .add_user("bob", PASSWORD, Role::Admin, &[])
        .await
        .unwrap();
    assert_eq!(store.session(&fresh).await.unwrap(), None);

    let error = store.create_session("nobody", hour).await.unwrap_err();
    assert!(format!("{error:#}").contains("no user named"), "{error:#}");
}

async fn tokens_act_for_their_owner_until_revoked(db: &Db) {
    let store = &db.store;
    store
        .add_user("ops", PASSWORD, Role::Operator, &groups(&["east"]))
        .await
        .unwrap();
    store
        .add_user("root", PASSWORD, Role::Admin, &[])
        .await
        .unwrap();

    let first = store
        .create_token("ops", "backup script", Role::Viewer)
        .await
        .unwrap();
    let (id, rest) = first
        .secret
        .strip_prefix("tth_")
        .unwrap()
        .split_once('_')
        .unwrap();
    assert_eq!(id, first.token.id);
    assert_eq!((id.len(), rest.len()), (16, 64));
    assert!(
        first
            .secret
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    );
    assert_eq!(first.token.owner, "ops");
    assert_eq!(first.token.role, Role::Viewer);
    assert!(!first.token.revoked && first.token.last_used_ms.is_none());

    let (user, token) = store
        .token(&first.secret)
        .await
        .unwrap()
        .expect("a live token");
    assert_eq!(
        (user.name.as_str(), user.groups),
        ("ops", groups(&["east"]))
    );
    assert_eq!((token.id.as_str(), token.role), (id, Role::Viewer));
    let used = token.last_used_ms.expect("its use is recorded");
    // Recorded at most once a minute: a second use soon after writes nothing.
    let (_, again) = store.token(&first.secret).await.unwrap().unwrap();
    assert_eq!(again.last_used_ms, Some(used));
    assert_eq!(
        store.token_by_id(id).await.unwrap().unwrap().last_used_ms,
        Some(used)
    );

    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = store
        .create_token("ops", "dashboard", Role::Operator)
        .await
        .unwrap();
    let root = store.create_token("root", "ci", Role::Admin).await.unwrap();
    let ids = |tokens: Vec<protocol::auth::TokenView>| -> Vec<String> {
        tokens.into_iter().map(|t| t.id).collect()
    };
    assert_eq!(
        ids(store.tokens(Some("ops")).await.unwrap()),
        [second.token.id.clone(), first.token.id.clone()],
        "newest first"
    );
    assert_eq!(store.tokens(None).await.unwrap().len(), 3);
    assert!(store.tokens(Some("nobody")).await.unwrap().is_empty());

    // A token never acts above its owner, even after the owner is demoted.
    let error = store
        .create_token("ops", "too strong", Role::Admin)
        .await
        .unwrap_err();
    assert!(matches!(error, AccountError::Invalid(_)), "{error:?}");
    assert_eq!(
        error.to_string(),
        "a token cannot have a higher role than its owner"
    );
    store.set_role("ops", Role::Viewer).await.unwrap();
    let (_, demoted) = store.token(&second.secret).await.unwrap().unwrap();
    assert_eq!(demoted.role, Role::Viewer);
    assert_eq!(
        store
            .token_by_id(&second.token.id)
            .await
            .unwrap()
            .unwrap()
            .role,
        Role::Viewer
    );
    store.set_role("ops", Role::Operator).await.unwrap();
    assert_eq!(
        store.token(&second.secret).await.unwrap().unwrap().1.role,
        Role::Operator
    );

    // Revoked: no longer accepted, still listed.
    let revoked = store.revoke_token(&first.token.id).await.unwrap();
    assert!(revoked.revoked);
    assert_eq!(store.token(&first.secret).await.unwrap(), None);
    assert!(
        store
            .token_by_id(&first.token.id)
            .await
            .unwrap()
            .unwrap()
            .revoked
    );
    assert!(
        store.revoke_token(&first.token.id).await.unwrap().revoked,
        "again is fine"
    );
    assert!(matches!(
        store.revoke_token("0123456789abcdef").await,
        Err(AccountError::NotFound(_))
    ));

    // The owner deleted: every token of theirs is revoked.
    store.delete_user("ops").await.unwrap();
    assert_eq!(store.token(&second.secret).await.unwrap(), None);
    assert!(
        store
            .tokens(Some("ops"))
            .await
            .unwrap()
            .iter()
            .all(|t| t.revoked)
    );
    assert!(
        store.token(&root.secret).await.unwrap().is_some(),
        "others keep theirs"
    );

    // Nonsense is turned away, unknown owners and bad names refused.
    assert_eq!(store.token("").await.unwrap(), None);
    assert_eq!(store.token("tth_nothing").await.unwrap(), None);
    assert_eq!(
        store
            .token(&root.secret.replace("tth_", "xyz_"))
            .await
            .unwrap(),
        None
    );
    assert!(matches!(
        store.create_token("ops", "x", Role::Viewer).await,
        Err(AccountError::NotFound(_))
    ));
    for name in ["", "tab\there", &"n".repeat(65)] {
        assert!(matches!(
            store.create_token("root", name, Role::Viewer).await,
            Err(AccountError::Invalid(_))
        ));
    }
}

async fn device_groups_are_replaced_and_listed(db: &Db) {
    let store = &db.store;
    assert!(store.device_groups().await.unwrap().is_empty());
    assert!(store.groups().await.unwrap().is_empty());
    store
        .set_device_groups("pump-1", &groups(&["west", "east"]))
        .await
        .unwrap();
    store
        .set_device_groups("pump-2", &groups(&["north"]))
        .await
        .unwrap();
    store
        .set_device_groups("pump-1", &groups(&["south"]))
        .await
        .unwrap();
    let all = store.device_groups().await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all["pump-1"], ["south"], "replaced, not added to");
    assert_eq!(all["pump-2"], ["north"]);
    store.set_device_groups("pump-2", &[]).await.unwrap();
    assert!(!store.device_groups().await.unwrap().contains_key("pump-2"));

    store
        .add_user("bob", PASSWORD, Role::Viewer, &groups(&["east", "south"]))
        .await
        .unwrap();
    assert_eq!(store.groups().await.unwrap(), ["east", "south"]);

    for (device, group) in [("pump.1", "ok"), ("", "ok"), ("pump-3", "a b")] {
        assert!(matches!(
            store.set_device_groups(device, &groups(&[group])).await,
            Err(AccountError::Invalid(_))
        ));
    }
}

async fn secrets_and_passwords_are_stored_only_hashed(db: &Db) {
    let store = &db.store;
    store
        .add_user("bob", PASSWORD, Role::Admin, &[])
        .await
        .unwrap();
    let session = store
        .create_session("bob", Duration::from_secs(60))
        .await
        .unwrap();
    let token = store.create_token("bob", "ci", Role::Viewer).await.unwrap();
    store.token(&token.secret).await.unwrap().expect("usable");
    let dump = db.dump().await;
    assert!(
        dump.contains("$argon2id$"),
        "the dump sees the users table:\n{dump}"
    );
    assert!(
        dump.contains(&token.token.id),
        "the dump sees the tokens table:\n{dump}"
    );
    for secret in [PASSWORD, session.as_str(), token.secret.as_str()] {
        assert!(
            !dump.contains(secret),
            "{secret} is stored as it is:\n{dump}"
        );
    }
    // Nor the part after the id, which is what makes a token secret.
    let (_, key) = token.secret.rsplit_once('_').unwrap();
    assert!(!dump.contains(key));
}

cases!(
    everywhere: [
        users_are_added_listed_and_found,
        bad_input_is_refused_with_a_reason,
        passwords_are_checked,
        sessions_last_until_ended_expired_or_superseded,
        tokens_act_for_their_owner_until_revoked,
        device_groups_are_replaced_and_listed,
    ],
    on_disk: [secrets_and_passwords_are_stored_only_hashed]
);

#[tokio::test]
async fn memory_stores_are_separate_and_hold_readings_too() {
    let (one, two) = (
        Store::memory().await.unwrap(),
        Store::open("memory").await.unwrap(),
    );
    one.add_user("bob", PASSWORD, Role::Admin, &[])
        .await
        .unwrap();
    assert_eq!(two.user_count().await.unwrap(), 0);
    let sample = store::Sample {
        device: "d1".into(),
        metric: "cpu".into(),
        ts_ms: 1_800_000_000_000,
        value: 1.0,
    };
    assert_eq!(one.insert(vec![sample]).await.unwrap(), 1);
    assert_eq!(
        one.count(None).await.unwrap(),
        1,
        "written and read on one connection"
    );
}
