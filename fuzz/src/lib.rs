//! Helpers shared by the fuzz targets: JSON values built from fuzzer bytes, biased
//! towards the keys and strings a parser looks at, so the fuzzer gets past "is this
//! a JSON object with a `type` field" quickly and spends its time on the checks
//! behind it.

use arbitrary::{Result, Unstructured};
use serde_json::{Map, Number, Value};

/// What a target's JSON is likely to contain.
pub struct Dict<'a> {
    /// Object keys the parser reads.
    pub keys: &'a [&'a str],
    /// String values worth trying (valid ids, enum words, timestamps, ...).
    pub strings: &'a [&'a str],
}

/// Deepest nesting built; serde_json's own limit is 128, the parsers care about 2 or 3.
pub const MAX_DEPTH: u32 = 4;
/// Longest array or object built.
pub const MAX_LEN: usize = 6;

/// A JSON value, any shape, at most `depth` levels deep.
pub fn value(u: &mut Unstructured, dict: &Dict, depth: u32) -> Result<Value> {
    let top = if depth == 0 { 5 } else { 7 };
    Ok(match u.int_in_range(0..=top)? {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => number(u)?,
        3 => Value::String(string(u, dict)?),
        4 | 5 => Value::String(pick(u, dict.strings)?.to_owned()),
        6 => {
            let len = u.int_in_range(0..=MAX_LEN)?;
            let mut items = Vec::with_capacity(len);
            for _ in 0..len {
                items.push(value(u, dict, depth - 1)?);
            }
            Value::Array(items)
        }
        _ => Value::Object(object(u, dict, depth - 1)?),
    })
}

/// A JSON object whose keys mostly come from the dictionary.
pub fn object(u: &mut Unstructured, dict: &Dict, depth: u32) -> Result<Map<String, Value>> {
    let len = u.int_in_range(0..=MAX_LEN + 2)?;
    let mut map = Map::new();
    for _ in 0..len {
        let key = if u.ratio(7u8, 8u8)? { pick(u, dict.keys)?.to_owned() } else { u.arbitrary::<String>()? };
        map.insert(key, value(u, dict, depth)?);
    }
    Ok(map)
}

/// A number of any JSON kind: small or huge integers, negative, fractional.
pub fn number(u: &mut Unstructured) -> Result<Value> {
    Ok(match u.int_in_range(0..=3)? {
        0 => Value::from(u.int_in_range(-3i64..=3)?),
        1 => Value::from(u.arbitrary::<i64>()?),
        2 => Value::from(u.arbitrary::<u64>()?),
        _ => Number::from_f64(u.arbitrary::<f64>()?).map(Value::Number).unwrap_or(Value::Null),
    })
}

/// A string: from the dictionary, an edit of a dictionary word, or anything.
pub fn string(u: &mut Unstructured, dict: &Dict) -> Result<String> {
    Ok(match u.int_in_range(0..=3)? {
        0 | 1 => pick(u, dict.strings)?.to_owned(),
        2 => {
            // A dictionary word with a few characters changed, inserted or cut.
            let mut chars: Vec<char> = pick(u, dict.strings)?.chars().collect();
            for _ in 0..u.int_in_range(1..=3)? {
                let at = u.int_in_range(0..=chars.len())?;
                match u.int_in_range(0..=2)? {
                    0 => chars.insert(at, u.arbitrary()?),
                    1 if at < chars.len() => chars[at] = u.arbitrary()?,
                    _ => chars.truncate(at),
                }
            }
            chars.into_iter().collect()
        }
        _ => u.arbitrary()?,
    })
}

/// One of `options` (the empty string when there are none).
pub fn pick<'a>(u: &mut Unstructured, options: &[&'a str]) -> Result<&'a str> {
    if options.is_empty() {
        return Ok("");
    }
    Ok(options[u.choose_index(options.len())?])
}

/// Is `s` a canonical lowercase UUID (what `parse_uuid` returns)?
pub fn is_lower_uuid(s: &str) -> bool {
    edgesync_shared::jwt::parse_uuid(s).as_deref() == Some(s) && !s.bytes().any(|b| b.is_ascii_uppercase())
}

/// Does a string or an object key anywhere in `v` contain U+0000 (which Postgres
/// `text` and `jsonb` refuse, failing a whole batch)? Written out here, so the
/// oracle does not depend on `shared`'s own check.
pub fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}
