//! Reading JSON without building it: a request's parts are checked and passed on as
//! the text they arrived as (`serde_json::value::RawValue`), not turned into `Value`
//! trees and serialised again. For an `/upload` batch that is most of the work.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// The deepest nesting accepted (serde_json's own limit when it builds values).
/// Checked explicitly because reading a value as raw text has no limit, and Postgres
/// would refuse deeper `jsonb` with an error about nothing in particular.
pub const MAX_DEPTH: usize = 128;

/// What one pass over a JSON text finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scan {
    /// The deepest nesting of arrays and objects.
    pub max_depth: usize,
    /// A string (or key) holds U+0000, which Postgres `text` and `jsonb` cannot store.
    /// (Valid JSON can only carry it escaped, as `\u0000`.)
    pub has_nul: bool,
}

/// One pass over `text`, which must be valid JSON (or the answers mean nothing).
pub fn scan(text: &[u8]) -> Scan {
    let mut out = Scan::default();
    let (mut depth, mut i) = (0usize, 0usize);
    while i < text.len() {
        match text[i] {
            b'"' => {
                // To the closing quote, jumping from one `"` or `\` to the next.
                i += 1;
                loop {
                    let Some(at) = memchr::memchr2(b'"', b'\\', &text[i..]) else {
                        i = text.len();
                        break;
                    };
                    i += at;
                    if text[i] == b'"' {
                        break;
                    }
                    if text.get(i + 1) == Some(&b'u') && text.get(i + 2..i + 6) == Some(b"0000") {
                        out.has_nul = true;
                    }
                    // Past the backslash and the character it escapes (`\"`, `\\`, the
                    // `u` of `\uXXXX`).
                    i = (i + 2).min(text.len());
                }
            }
            b'[' | b'{' => {
                depth += 1;
                out.max_depth = out.max_depth.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    out
}

/// The values of `names` in the JSON object `raw` (the last one where a key repeats,
/// as `serde_json::Value` and Postgres `jsonb` read it), as raw text; other keys are
/// skipped. An error when `raw` is not an object.
pub fn fields<'a, const N: usize>(
    raw: &'a str,
    names: [&str; N],
) -> Result<[Option<&'a RawValue>; N], serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(raw);
    let out = Fields { names }.deserialize(&mut de)?;
    de.end()?;
    Ok(out)
}

struct Fields<'n, const N: usize> {
    names: [&'n str; N],
}

impl<'de, const N: usize> DeserializeSeed<'de> for Fields<'_, N> {
    type Value = [Option<&'de RawValue>; N];

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, const N: usize> Visitor<'de> for Fields<'_, N> {
    type Value = [Option<&'de RawValue>; N];

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = [None; N];
        while let Some(Str(key)) = map.next_key()? {
            let value: &'de RawValue = map.next_value()?;
            if let Some(i) = self.names.iter().position(|n| *n == key) {
                out[i] = Some(value);
            }
        }
        Ok(out)
    }
}

/// A JSON string (an object key, or a value read with [`as_str`]), borrowed from the
/// text unless it had escapes to decode. (serde's own `Cow<str>` always copies.)
struct Str<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// A raw value that is JSON `null` (or absent) reads as None.
pub fn non_null(v: Option<&RawValue>) -> Option<&RawValue> {
    v.filter(|v| v.get() != "null")
}

/// A raw value as a string (escapes decoded), if it is one.
pub fn as_str(v: &RawValue) -> Option<Cow<'_, str>> {
    serde_json::from_str::<Str>(v.get()).ok().map(|s| s.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_finds_depth_and_escaped_nul_only_in_strings() {
        assert_eq!(scan(br#"{"a":[1,{"b":2}]}"#), Scan { max_depth: 3, has_nul: false });
        assert_eq!(scan(br#"["[[[{{", "\"[", "\\"]"#), Scan { max_depth: 1, has_nul: false });
        assert!(scan(br#"{"a\u0000":1}"#).has_nul);
        assert!(scan(br#"["x\u0000y"]"#).has_nul);
        // An escaped backslash followed by the text `u0000` is not a NUL.
        assert!(!scan(br#"["\\u0000"]"#).has_nul);
        assert!(scan(br#"["\\\u0000"]"#).has_nul);
        assert!(!scan(br#"["\u0001"]"#).has_nul);
        assert!(scan(br#"["\u00000"]"#).has_nul);
        assert_eq!(scan("[".repeat(500).as_bytes()).max_depth, 500);
        // Not JSON: meaningless answers, but no panic.
        for junk in [&b"\"\\"[..], b"\"", b"\"\\u00", b"]]}", b"\\"] {
            scan(junk);
        }
    }

    #[test]
    fn scan_agrees_with_serde_on_nul() {
        for text in [r#"{"k":"a\u0000"}"#, r#"{"k\u0000":1}"#, r#"{"k":"\\u0000"}"#, r#"[["\u0000"]]"#, r#"["ok"]"#] {
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(scan(text.as_bytes()).has_nul, crate::has_nul(&v), "{text}");
        }
    }

    #[test]
    fn fields_take_the_last_of_a_repeated_key_and_decode_escaped_keys() {
        let [a, b, c] = fields(r#"{"a":1,"b":{"x":[1]},"a":null,"c":"s","z":2}"#, ["a", "b", "c"]).unwrap();
        assert_eq!((a.unwrap().get(), b.unwrap().get(), c.unwrap().get()), ("null", r#"{"x":[1]}"#, r#""s""#));
        let [u] = fields(r#"{"user\u005fid":"x"}"#, ["user_id"]).unwrap();
        assert_eq!(u.unwrap().get(), r#""x""#);
        assert!(fields(r#"[1]"#, ["a"]).is_err());
        assert!(fields(r#""s""#, ["a"]).is_err());
        assert!(non_null(a).is_none());
        assert_eq!(as_str(c.unwrap()).as_deref(), Some("s"));
        assert_eq!(as_str(b.unwrap()), None);
        // Borrowed from the text unless there are escapes to decode.
        assert!(matches!(as_str(c.unwrap()), Some(Cow::Borrowed("s"))));
        let [e] = fields(r#"{"e":"a\nb"}"#, ["e"]).unwrap();
        assert!(matches!(as_str(e.unwrap()).as_deref(), Some("a\nb")));
        for not_a_string in ["1", "null", "true", "[\"s\"]", "{}"] {
            let v: &RawValue = serde_json::from_str(not_a_string).unwrap();
            assert_eq!(as_str(v), None, "{not_a_string}");
        }
    }
}
