//! The little SQL both backends speak, so accounts, the audit trail and the command log
//! are written once instead of once per database.
//!
//! Statements use PostgreSQL's `$1, $2…` placeholders; SQLite is handed `?1, ?2…`, which
//! it numbers the same way. Values are only integers, text and NULL: columns are
//! declared `BIGINT` or `TEXT`, which both databases store and give back as `i64` and
//! `String`, so nothing here has to know which database it talks to. The samples keep
//! their own, faster, per-backend code (batches, `UNNEST`, floats).
//!
//! Every statement stands alone: PostgreSQL's one client is shared by every task
//! (pipelined), so a transaction opened on it would take in other tasks' statements.
//! The accounts are laid out so that each change is one statement (see `accounts`).

use anyhow::Context as _;

use crate::Store;

/// One parameter or column value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Int(i64),
    Text(String),
    Null,
}

impl From<i64> for Value {
    fn from(value: i64) -> Self {
        Self::Int(value)
    }
}

impl From<&str> for Value {
    fn from(value: &str) -> Self {
        Self::Text(value.to_owned())
    }
}

impl From<String> for Value {
    fn from(value: String) -> Self {
        Self::Text(value)
    }
}

/// One result row, its columns in the order the `SELECT` names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row(pub(crate) Vec<Value>);

impl Row {
    fn get(&self, column: usize) -> anyhow::Result<&Value> {
        self.0
            .get(column)
            .with_context(|| format!("a row has no column {column}"))
    }

    /// An integer column that may not be NULL.
    pub(crate) fn int(&self, column: usize) -> anyhow::Result<i64> {
        self.opt_int(column)?
            .with_context(|| format!("column {column} is NULL"))
    }

    /// An integer column that may be NULL.
    pub(crate) fn opt_int(&self, column: usize) -> anyhow::Result<Option<i64>> {
        match self.get(column)? {
            Value::Int(value) => Ok(Some(*value)),
            Value::Null => Ok(None),
            Value::Text(_) => anyhow::bail!("column {column} is text, not an integer"),
        }
    }

    /// A text column that may not be NULL.
    pub(crate) fn text(&self, column: usize) -> anyhow::Result<&str> {
        match self.get(column)? {
            Value::Text(value) => Ok(value),
            Value::Null => anyhow::bail!("column {column} is NULL"),
            Value::Int(_) => anyhow::bail!("column {column} is an integer, not text"),
        }
    }

    /// A text column that may be NULL.
    pub(crate) fn opt_text(&self, column: usize) -> anyhow::Result<Option<&str>> {
        match self.get(column)? {
            Value::Text(value) => Ok(Some(value)),
            Value::Null => Ok(None),
            Value::Int(_) => anyhow::bail!("column {column} is an integer, not text"),
        }
    }

    /// An integer column that is a count, a time or a sequence number: never negative.
    pub(crate) fn unsigned(&self, column: usize) -> anyhow::Result<u64> {
        let value = self.int(column)?;
        u64::try_from(value).with_context(|| format!("column {column} is negative: {value}"))
    }
}

impl Store {
    /// Runs one statement that returns no rows; gives how many rows it changed.
    pub(crate) async fn execute(&self, sql: &str, params: Vec<Value>) -> anyhow::Result<u64> {
        match self {
            Self::Sqlite(store) => store.execute(sqlite_placeholders(sql), params).await,
            Self::Postgres(store) => store.execute(sql, params).await,
        }
    }

    /// Runs statements that return no rows, in order: on SQLite in one transaction (all
    /// or none), on PostgreSQL each on its own (its one client is shared, see above), so
    /// each must leave the tables whole if the ones after it fail. Gives how many rows
    /// they changed.
    pub(crate) async fn execute_all(
        &self,
        statements: Vec<(String, Vec<Value>)>,
    ) -> anyhow::Result<u64> {
        match self {
            Self::Sqlite(store) => {
                let statements = statements
                    .into_iter()
                    .map(|(sql, params)| (sqlite_placeholders(&sql), params))
                    .collect();
                store.execute_all(statements).await
            }
            Self::Postgres(store) => {
                let mut changed = 0;
                for (sql, params) in statements {
                    changed += store.execute(&sql, params).await?;
                }
                Ok(changed)
            }
        }
    }

    /// Runs one `SELECT`.
    pub(crate) async fn query(&self, sql: &str, params: Vec<Value>) -> anyhow::Result<Vec<Row>> {
        match self {
            Self::Sqlite(store) => store.query(sqlite_placeholders(sql), params).await,
            Self::Postgres(store) => store.query(sql, params).await,
        }
    }

    /// Runs one `SELECT` that gives at most one row (any beyond the first are ignored).
    pub(crate) async fn query_opt(
        &self,
        sql: &str,
        params: Vec<Value>,
    ) -> anyhow::Result<Option<Row>> {
        Ok(self.query(sql, params).await?.into_iter().next())
    }
}

/// `$1` becomes `?1`. Only the statements in this crate pass through here, and none has
/// a `$` inside a string literal.
pub(crate) fn sqlite_placeholders(sql: &str) -> String {
    sql.replace('$', "?")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_keep_their_numbers() {
        assert_eq!(
            sqlite_placeholders("SELECT a FROM t WHERE b = $2 AND c = $10 OR d = $1"),
            "SELECT a FROM t WHERE b = ?2 AND c = ?10 OR d = ?1"
        );
    }

    #[test]
    fn rows_say_what_is_wrong_with_a_column() {
        let row = Row(vec![Value::Int(-1), "x".into(), Value::Null]);
        assert_eq!(row.int(0).unwrap(), -1);
        assert_eq!(row.text(1).unwrap(), "x");
        assert_eq!(row.opt_int(2).unwrap(), None);
        assert!(row.unsigned(0).is_err());
        assert!(row.int(1).is_err());
        assert!(row.text(2).is_err());
        assert!(row.int(3).is_err());
    }
}
