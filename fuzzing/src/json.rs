//! JSON values built from the fuzzer's bytes, leaning towards the ones that break
//! checks: numbers at the edges of their types (`42.0` where an integer is wanted,
//! `u64::MAX`, `-0.0`, huge and tiny floats), strings of odd characters, and names and
//! values taken from the shapes the targets expect.

use arbitrary::{Result, Unstructured};
use serde_json::{Map, Number, Value};

/// Words the targets' types use, so that generated objects often have the right keys.
const WORDS: &[&str] = &[
    "v",
    "type",
    "device_id",
    "session_id",
    "inbox",
    "kind",
    "firmware",
    "heartbeat_ms",
    "capabilities",
    "commands",
    "metrics",
    "reporting",
    "interval_ms",
    "fastest_ms",
    "name",
    "description",
    "args",
    "required",
    "default",
    "min",
    "max",
    "max_len",
    "choices",
    "unit",
    "command_id",
    "timeout_ms",
    "outcome",
    "result",
    "error",
    "code",
    "message",
    "percent",
    "ts_ms",
    "value",
    "metric",
    "reason",
    "replica",
    "lease_ms",
    "query",
    "search",
    "status",
    "sort",
    "order",
    "limit",
    "cursor",
    "from",
    "to",
    "max_points",
    "job_id",
    "targets",
    "ids",
    "concurrency",
    "failure_threshold",
    "offline",
    "wait_ms",
    "artifact",
    "version",
    "arch",
    "hello",
    "heartbeat",
    "bye",
    "delivered",
    "progress",
    "reply",
    "telemetry",
    "command",
    "cancel",
    "announce",
    "watch",
    "unwatch",
    "fleet",
    "follow",
    "unfollow",
    "boolean",
    "integer",
    "number",
    "string",
    "choice",
    "succeeded",
    "failed",
    "rejected",
    "busy",
    "gw-1",
    "",
    "é",
    "a.b",
    "*",
    "#",
    "\u{0}",
    "\u{202e}",
    "🙂",
];

/// A number at or near the edges that checks get wrong.
fn number(u: &mut Unstructured) -> Result<Value> {
    const FLOATS: &[f64] = &[
        0.0,
        -0.0,
        0.5,
        42.0,
        -1.5,
        1e15,
        9_007_199_254_740_993.0,
        1e308,
        -1e308,
        f64::MIN_POSITIVE,
        f64::EPSILON,
    ];
    const INTEGERS: &[i64] = &[0, 1, -1, 100, 255, 65_536, i64::MAX, i64::MIN];
    Ok(match u.int_in_range(0..=4u8)? {
        0 => Value::from(*u.choose(INTEGERS)?),
        1 => Number::from_f64(*u.choose(FLOATS)?).map_or(Value::Null, Value::Number),
        2 => Value::from(u.arbitrary::<u64>()?),
        3 => Value::from(u.arbitrary::<i32>()?),
        _ => Number::from_f64(u.arbitrary::<f64>()?).map_or(Value::Null, Value::Number),
    })
}

pub fn string(u: &mut Unstructured) -> Result<String> {
    Ok(match u.int_in_range(0..=3u8)? {
        0 | 1 => (*u.choose(WORDS)?).to_owned(),
        2 => u.arbitrary::<String>()?,
        _ => {
            let word = *u.choose(WORDS)?;
            word.repeat(u.int_in_range(1..=300usize)?)
        }
    })
}

/// Any JSON value, nested at most `depth` deep.
pub fn value(u: &mut Unstructured, depth: u8) -> Result<Value> {
    let kinds = if depth == 0 { 3 } else { 5 };
    Ok(match u.int_in_range(0..=kinds)? {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => number(u)?,
        3 => Value::String(string(u)?),
        4 => {
            let len = u.int_in_range(0..=4usize)?;
            let mut items = Vec::with_capacity(len);
            for _ in 0..len {
                items.push(value(u, depth - 1)?);
            }
            Value::Array(items)
        }
        _ => Value::Object(object(u, depth - 1)?),
    })
}

/// A JSON object with keys mostly from the targets' vocabulary.
pub fn object(u: &mut Unstructured, depth: u8) -> Result<Map<String, Value>> {
    let len = u.int_in_range(0..=6usize)?;
    let mut map = Map::new();
    for _ in 0..len {
        map.insert(string(u)?, value(u, depth)?);
    }
    Ok(map)
}
