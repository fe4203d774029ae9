//! Artifacts over HTTP: an admin uploads a file, which is kept with its SHA-256, size
//! and the server's signature; nobody else may; a device downloads it only with its
//! token, before the token expires, and resumes a download with `Range`.

mod support;

use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
use protocol::{
    DeviceId,
    artifact::{ArtifactId, ArtifactView},
    auth::Role,
};
use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

fn file(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i * 7 % 251) as u8).collect()
}

async fn upload(
    server: &support::Running,
    client: &reqwest::Client,
    query: &str,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let response = client
        .post(server.url(&format!("/api/v1/artifacts?{query}")))
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

#[tokio::test]
async fn an_admin_uploads_an_artifact_kept_with_its_hash_size_and_signature() {
    let server = support::start().await;
    let (admin, _, _) = server.user(Role::Admin, &[]).await;
    let (operator, _, _) = server.user(Role::Operator, &[]).await;
    let bytes = file(300_000);

    let (status, body) = upload(
        &server,
        &admin,
        "name=tether-agent&version=2.0.0&arch=aarch64",
        bytes.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let artifact: ArtifactView = serde_json::from_value(body).unwrap();
    assert_eq!(artifact.size, 300_000);
    assert_eq!(artifact.sha256, hex::encode(Sha256::digest(&bytes)));
    assert_eq!(
        (
            artifact.name.as_str(),
            artifact.version.as_str(),
            artifact.arch.as_str()
        ),
        ("tether-agent", "2.0.0", "aarch64")
    );

    // The signature verifies with the key the server publishes.
    let key: Value = admin
        .get(server.url("/api/v1/artifacts/signing-key"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key: [u8; 32] = hex::decode(key["public_key"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let key = VerifyingKey::from_bytes(&key).unwrap();
    let signature: [u8; 64] = hex::decode(&artifact.signature)
        .unwrap()
        .try_into()
        .unwrap();
    let digest = hex::decode(&artifact.sha256).unwrap();
    key.verify(&digest, &Signature::from_bytes(&signature))
        .expect("the server's signature of the file's digest");

    // Listed and read back, by anyone logged in.
    let listed: Vec<ArtifactView> = operator
        .get(server.url("/api/v1/artifacts"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(listed.contains(&artifact));
    let one: ArtifactView = operator
        .get(server.url(&format!("/api/v1/artifacts/{}", artifact.id)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one, artifact);

    // Nobody but an admin uploads or removes; bad fields and empty files are refused.
    let (status, _) = upload(&server, &operator, "name=x&version=1&arch=any", file(10)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = upload(&server, &admin, "name=x&version=1&arch=mips", file(10)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_input"))
    );
    let (status, body) = upload(&server, &admin, "name=x&version=1&arch=any", Vec::new()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_input"))
    );
    let (status, _) = upload(&server, &admin, "name=x&arch=any", file(10)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "the version is required");
    let removed = operator
        .delete(server.url(&format!("/api/v1/artifacts/{}", artifact.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), StatusCode::FORBIDDEN);
    let removed = admin
        .delete(server.url(&format!("/api/v1/artifacts/{}", artifact.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), StatusCode::NO_CONTENT);
    let gone = admin
        .get(server.url(&format!("/api/v1/artifacts/{}", artifact.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);

    let audit = server
        .accounts
        .audit(store::AuditQuery {
            target: Some(artifact.id.0.clone()),
            ..store::AuditQuery::default()
        })
        .await
        .unwrap();
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "artifact_removed",
            "artifact_remove_refused",
            "artifact_uploaded"
        ]
    );
}

#[tokio::test]
async fn an_artifact_larger_than_the_limit_is_refused_and_not_kept() {
    let server = support::start_with(|config| config.max_artifact_mb = 1).await;
    let (admin, _, _) = server.user(Role::Admin, &[]).await;
    let (status, body) = upload(
        &server,
        &admin,
        "name=big&version=1&arch=any",
        file(1_100_000),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["code"], "artifact_too_large");
    let listed: Vec<ArtifactView> = admin
        .get(server.url("/api/v1/artifacts"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(listed.is_empty());
}

#[tokio::test]
async fn a_device_downloads_with_its_token_only_and_resumes_with_range() {
    let server = support::start().await;
    let (admin, _, _) = server.user(Role::Admin, &[]).await;
    let bytes = file(200_000);
    let (_, body) = upload(&server, &admin, "name=fw&version=3&arch=any", bytes.clone()).await;
    let artifact: ArtifactView = serde_json::from_value(body).unwrap();
    let device = DeviceId::new("gw-7").unwrap();
    let later = common::now_ms() + 60_000;
    let link = server.url(&server.artifacts.download_path(&artifact.id, &device, later));
    // No login: the token is the credential.
    let anonymous = reqwest::Client::new();

    let whole = anonymous.get(&link).send().await.unwrap();
    assert_eq!(whole.status(), StatusCode::OK);
    assert_eq!(whole.headers()["accept-ranges"], "bytes");
    assert_eq!(whole.bytes().await.unwrap().as_ref(), bytes.as_slice());

    // Cut half way: the rest, from where it stopped.
    let rest = anonymous
        .get(&link)
        .header("range", "bytes=120000-")
        .send()
        .await
        .unwrap();
    assert_eq!(rest.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        rest.headers()["content-range"],
        "bytes 120000-199999/200000"
    );
    assert_eq!(rest.bytes().await.unwrap().as_ref(), &bytes[120_000..]);
    let beyond = anonymous
        .get(&link)
        .header("range", "bytes=300000-")
        .send()
        .await
        .unwrap();
    assert_eq!(beyond.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    // Another device's token, a forged one, an expired one, another artifact: refused.
    let other = DeviceId::new("gw-8").unwrap();
    let forged = link.replace("device=gw-7", "device=gw-8");
    let expired = server.url(&server.artifacts.download_path(&artifact.id, &device, 1_000));
    let elsewhere = server.url(&server.artifacts.download_path(
        &ArtifactId("0".repeat(32)),
        &device,
        later,
    ));
    for (url, status, code) in [
        (forged, StatusCode::FORBIDDEN, "invalid_token"),
        (
            link.replace("&token=", "&token=00"),
            StatusCode::FORBIDDEN,
            "invalid_token",
        ),
        (expired, StatusCode::FORBIDDEN, "token_expired"),
        (elsewhere, StatusCode::NOT_FOUND, "unknown_artifact"),
    ] {
        let response = anonymous.get(&url).send().await.unwrap();
        assert_eq!(response.status(), status, "{url}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], code);
    }
    let mine = server.url(&server.artifacts.download_path(&artifact.id, &other, later));
    assert_eq!(
        anonymous.get(&mine).send().await.unwrap().status(),
        StatusCode::OK
    );
    // Everything else about artifacts needs a login.
    let listing = anonymous
        .get(server.url("/api/v1/artifacts"))
        .send()
        .await
        .unwrap();
    assert_eq!(listing.status(), StatusCode::UNAUTHORIZED);
}
