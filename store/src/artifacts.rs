//! Artifacts (see `protocol::artifact`): what an admin uploaded for devices to install.
//! The files themselves are on disk (the server's data folder); this table describes
//! them: name, version, architecture, SHA-256, size, signature, who and when.

use anyhow::Context as _;
use protocol::artifact::{ArtifactId, ArtifactView};

use crate::{
    Store,
    sql::{Row, Value},
};

pub(crate) const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS artifacts (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        arch TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size BIGINT NOT NULL,
        signature TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_ms BIGINT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS artifacts_by_time ON artifacts (created_ms, id);
";

const COLUMNS: &str = "id, name, version, arch, sha256, size, signature, created_by, created_ms";

impl Store {
    /// Records an artifact whose file is in place.
    pub async fn add_artifact(&self, artifact: &ArtifactView) -> anyhow::Result<()> {
        self.execute(
            &format!(
                "INSERT INTO artifacts ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            ),
            vec![
                artifact.id.0.as_str().into(),
                artifact.name.as_str().into(),
                artifact.version.as_str().into(),
                artifact.arch.as_str().into(),
                artifact.sha256.as_str().into(),
                int(artifact.size),
                artifact.signature.as_str().into(),
                artifact.created_by.as_str().into(),
                int(artifact.created_ms),
            ],
        )
        .await
        .context("cannot record an artifact")?;
        Ok(())
    }

    /// One artifact.
    pub async fn artifact(&self, id: &str) -> anyhow::Result<Option<ArtifactView>> {
        let row = self
            .query_opt(
                &format!("SELECT {COLUMNS} FROM artifacts WHERE id = $1"),
                vec![id.into()],
            )
            .await
            .context("cannot read an artifact")?;
        row.as_ref().map(artifact_from).transpose()
    }

    /// Every artifact, newest first.
    pub async fn artifacts(&self) -> anyhow::Result<Vec<ArtifactView>> {
        let rows = self
            .query(
                &format!("SELECT {COLUMNS} FROM artifacts ORDER BY created_ms DESC, id DESC"),
                vec![],
            )
            .await
            .context("cannot read artifacts")?;
        rows.iter().map(artifact_from).collect()
    }

    /// Forgets an artifact: whether there was one.
    pub async fn remove_artifact(&self, id: &str) -> anyhow::Result<bool> {
        let removed = self
            .execute("DELETE FROM artifacts WHERE id = $1", vec![id.into()])
            .await
            .context("cannot remove an artifact")?;
        Ok(removed > 0)
    }
}

fn artifact_from(row: &Row) -> anyhow::Result<ArtifactView> {
    Ok(ArtifactView {
        id: ArtifactId(row.text(0)?.to_owned()),
        name: row.text(1)?.to_owned(),
        version: row.text(2)?.to_owned(),
        arch: row.text(3)?.to_owned(),
        sha256: row.text(4)?.to_owned(),
        size: row.unsigned(5)?,
        signature: row.text(6)?.to_owned(),
        created_by: row.text(7)?.to_owned(),
        created_ms: row.unsigned(8)?,
    })
}

fn int(value: u64) -> Value {
    Value::Int(i64::try_from(value).unwrap_or(i64::MAX))
}
