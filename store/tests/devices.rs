//! Device credentials: provisioning, checking a secret, rotating and revoking, each case
//! on SQLite, on PostgreSQL and in memory; and, on the two databases that have tables
//! to look into, that no secret is stored (see `support`).

#[macro_use]
mod support;

use store::AccountError;
use support::Db;

async fn devices_are_provisioned_listed_and_checked(db: &Db) {
    let store = &db.store;
    assert!(store.provisioned_devices().await.unwrap().is_empty());
    let secret = store.provision_device("boiler-1").await.unwrap();
    assert_eq!(secret.len(), 48, "24 bytes in hex: {secret}");
    assert!(secret.chars().all(|c| c.is_ascii_hexdigit()), "{secret}");
    let other = store.provision_device("alpha_2").await.unwrap();
    assert_ne!(secret, other);

    let listed = store.provisioned_devices().await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["alpha_2", "boiler-1"], "sorted by id");
    assert!(listed[1].created_ms > 1_700_000_000_000);
    assert_eq!(listed[1].rotated_ms, None);

    assert!(
        store
            .check_device_secret("boiler-1", &secret)
            .await
            .unwrap()
    );
    assert!(!store.check_device_secret("boiler-1", &other).await.unwrap());
    assert!(!store.check_device_secret("alpha_2", &secret).await.unwrap());
    assert!(!store.check_device_secret("boiler-1", "").await.unwrap());
    assert!(
        !store
            .check_device_secret("boiler-1", &secret.to_uppercase())
            .await
            .unwrap()
    );
    assert!(!store.check_device_secret("nobody", &secret).await.unwrap());
    assert!(
        !store
            .check_device_secret("not an id", &secret)
            .await
            .unwrap()
    );
    let huge = secret.repeat(100);
    assert!(!store.check_device_secret("boiler-1", &huge).await.unwrap());
}

async fn rotating_replaces_the_secret(db: &Db) {
    let store = &db.store;
    let old = store.provision_device("pump-7").await.unwrap();
    let new = store.rotate_device_secret("pump-7").await.unwrap();
    assert_ne!(old, new);
    assert!(!store.check_device_secret("pump-7", &old).await.unwrap());
    assert!(store.check_device_secret("pump-7", &new).await.unwrap());
    let [device] = store
        .provisioned_devices()
        .await
        .unwrap()
        .try_into()
        .unwrap();
    let rotated = device.rotated_ms.expect("rotated");
    assert!(rotated >= device.created_ms, "{device:?}");

    let error = store.rotate_device_secret("pump-8").await.unwrap_err();
    assert!(matches!(error, AccountError::NotFound(_)), "{error:?}");
    assert!(error.to_string().contains("not provisioned"), "{error}");
}

async fn revoking_deletes_the_credential(db: &Db) {
    let store = &db.store;
    let secret = store.provision_device("gate-3").await.unwrap();
    store.provision_device("gate-4").await.unwrap();
    store.revoke_device("gate-3").await.unwrap();
    assert!(!store.check_device_secret("gate-3", &secret).await.unwrap());
    let ids: Vec<String> = store
        .provisioned_devices()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids, ["gate-4"]);
    let again = store.revoke_device("gate-3").await.unwrap_err();
    assert!(matches!(again, AccountError::NotFound(_)), "{again:?}");

    // Provisioned again, it gets a new secret; the old one stays dead.
    let renewed = store.provision_device("gate-3").await.unwrap();
    assert_ne!(renewed, secret);
    assert!(store.check_device_secret("gate-3", &renewed).await.unwrap());
    assert!(!store.check_device_secret("gate-3", &secret).await.unwrap());
}

async fn duplicates_and_invalid_ids_are_refused(db: &Db) {
    let store = &db.store;
    let secret = store.provision_device("boiler-1").await.unwrap();
    let error = store.provision_device("boiler-1").await.unwrap_err();
    assert!(matches!(error, AccountError::Exists(_)), "{error:?}");
    assert!(error.to_string().contains("already provisioned"), "{error}");
    assert!(
        store
            .check_device_secret("boiler-1", &secret)
            .await
            .unwrap(),
        "the first secret still holds"
    );
    for bad in ["", "two words", "a/b", "dot.ted", "é", &"d".repeat(65)] {
        let error = store.provision_device(bad).await.unwrap_err();
        assert!(
            matches!(error, AccountError::Invalid(_)),
            "{bad}: {error:?}"
        );
    }
    assert_eq!(store.provisioned_devices().await.unwrap().len(), 1);
}

async fn one_of_concurrent_provisionings_wins(db: &Db) {
    let tries: Vec<_> = (0..4)
        .map(|_| {
            let store = db.store.clone();
            tokio::spawn(async move { store.provision_device("racer").await })
        })
        .collect();
    let mut secrets = Vec::new();
    for attempt in tries {
        match attempt.await.unwrap() {
            Ok(secret) => secrets.push(secret),
            Err(AccountError::Exists(_)) => {}
            Err(other) => panic!("{other:?}"),
        }
    }
    let [secret] = secrets.try_into().expect("exactly one provisioning wins");
    assert!(
        db.store
            .check_device_secret("racer", &secret)
            .await
            .unwrap()
    );
}

/// A secret is good only as long as its credential: rotated or revoked, it is refused
/// at once.
async fn a_remembered_secret_dies_with_its_credential(db: &Db) {
    let store = &db.store;
    let old = store.provision_device("relay-1").await.unwrap();
    for _ in 0..2 {
        assert!(store.check_device_secret("relay-1", &old).await.unwrap());
    }
    assert!(!store.check_device_secret("relay-1", "0000").await.unwrap());
    let new = store.rotate_device_secret("relay-1").await.unwrap();
    assert!(
        !store.check_device_secret("relay-1", &old).await.unwrap(),
        "rotated"
    );
    for _ in 0..2 {
        assert!(store.check_device_secret("relay-1", &new).await.unwrap());
    }
    assert!(
        !store.check_device_secret("relay-2", &new).await.unwrap(),
        "another device's secret"
    );
    store.revoke_device("relay-1").await.unwrap();
    assert!(
        !store.check_device_secret("relay-1", &new).await.unwrap(),
        "revoked"
    );
}

async fn device_secrets_are_stored_only_hashed(db: &Db) {
    let store = &db.store;
    let first = store.provision_device("boiler-1").await.unwrap();
    let rotated = store.rotate_device_secret("boiler-1").await.unwrap();
    let other = store.provision_device("boiler-2").await.unwrap();
    let dump = db.dump().await;
    assert!(
        dump.contains("boiler-2") && dump.contains("sha256$"),
        "the dump sees the device_credentials table:\n{dump}"
    );
    for secret in [&first, &rotated, &other] {
        assert!(
            !dump.contains(secret.as_str()),
            "{secret} is stored as it is:\n{dump}"
        );
    }
}

cases!(
    everywhere: [
        devices_are_provisioned_listed_and_checked,
        rotating_replaces_the_secret,
        revoking_deletes_the_credential,
        duplicates_and_invalid_ids_are_refused,
        one_of_concurrent_provisionings_wins,
        a_remembered_secret_dies_with_its_credential,
    ],
    on_disk: [device_secrets_are_stored_only_hashed]
);
