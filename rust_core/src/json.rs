//! A strict JSON value for the stanza area: objects keep their order and reject duplicate
//! names, numbers must be integers in [0, 2^53 - 1], nesting is at most [`MAX_DEPTH`] levels.
//! serde_json's own `Value` silently keeps the last of duplicate names, which would let two
//! readers see two different headers.

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::collections::HashSet;
use std::fmt;

/// Largest integer the format allows (interoperable with parsers that use doubles).
pub const MAX_INT: u64 = (1 << 53) - 1;

/// Deepest nesting a reader accepts (`spec/FORMAT.md`, "Header"): every object and every array
/// is one level, the outermost object is level 1. (serde_json's own limit stops one level
/// earlier, so the tree parser turns it off and counts levels itself.)
pub const MAX_DEPTH: usize = 128;

#[derive(Debug)]
pub enum Json {
    Null,
    /// Booleans only occur where the typed header parser reads them; the tree keeps the kind.
    Bool,
    Int(u64),
    Str(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    pub fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool => "a boolean",
            Json::Int(_) => "an integer",
            Json::Str(_) => "a string",
            Json::Array(_) => "an array",
            Json::Object(_) => "an object",
        }
    }
}

/// Parses one value whose containers would be at nesting level `self.0 + 1`.
#[derive(Clone, Copy)]
struct Level(usize);

impl Level {
    /// The level of a container opened here, or an error past [`MAX_DEPTH`].
    fn enter<E: de::Error>(self) -> Result<Level, E> {
        let level = self.0 + 1;
        if level > MAX_DEPTH {
            return Err(E::custom(format!(
                "JSON nested deeper than {MAX_DEPTH} levels"
            )));
        }
        Ok(Level(level))
    }
}

impl<'de> DeserializeSeed<'de> for Level {
    type Value = Json;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Json, D::Error> {
        d.deserialize_any(JsonVisitor(self))
    }
}

struct JsonVisitor(Level);

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Json, E> {
        let _ = v;
        Ok(Json::Bool)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Json, E> {
        if v > MAX_INT {
            return Err(E::custom(format!("integer {v} is larger than 2^53 - 1")));
        }
        Ok(Json::Int(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Json, E> {
        // serde_json only calls this for numbers written with a minus sign.
        Err(E::custom(format!("negative number {v} is not allowed")))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Json, E> {
        Err(E::custom(format!(
            "number {v} is not an integer (fractions and exponents are not allowed)"
        )))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Json, E> {
        Ok(Json::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Json, E> {
        Ok(Json::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let inner = self.0.enter()?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(inner)? {
            out.push(v);
        }
        Ok(Json::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let inner = self.0.enter()?;
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        while let Some(k) = map.next_key::<String>()? {
            if !seen.insert(k.clone()) {
                return Err(de::Error::custom(format!("duplicate member name {k:?}")));
            }
            let v = map.next_value_seed(inner)?;
            out.push((k, v));
        }
        Ok(Json::Object(out))
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Json, D::Error> {
        Level(0).deserialize(d)
    }
}

/// The JSON text of a header or stanza area: it must start with `{` and may be followed only
/// by spaces; returns the text without the spaces.
pub fn frame(bytes: &[u8]) -> Result<&[u8], String> {
    if bytes.first() != Some(&b'{') {
        return Err("it must start with '{'".into());
    }
    let end = bytes.iter().rposition(|&b| b != b' ').map_or(0, |p| p + 1);
    let body = &bytes[..end];
    if body.last() != Some(&b'}') {
        return Err("it must be one JSON object followed only by spaces".into());
    }
    Ok(body)
}

/// Parses header bytes: one JSON object starting at the first byte, followed only by spaces.
pub fn parse_header_json(bytes: &[u8]) -> Result<Json, String> {
    let body = frame(bytes)?;
    let mut de = serde_json::Deserializer::from_slice(body);
    // Levels are counted by `Level` (at most MAX_DEPTH, so recursion stays bounded).
    de.disable_recursion_limit();
    let v = Json::deserialize(&mut de).map_err(|e| format!("invalid JSON: {e}"))?;
    de.end().map_err(|e| format!("invalid JSON: {e}"))?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_duplicates_at_any_depth() {
        assert!(parse_header_json(br#"{"a":1,"a":2}"#).is_err());
        assert!(parse_header_json(br#"{"a":{"b":1,"b":1}}"#).is_err());
        assert!(parse_header_json(br#"{"a":[{"b":1,"b":1}]}"#).is_err());
    }

    #[test]
    fn numbers_must_be_small_non_negative_integers() {
        assert!(parse_header_json(br#"{"a":-1}"#).is_err());
        assert!(parse_header_json(br#"{"a":-0}"#).is_err());
        assert!(parse_header_json(br#"{"a":1.0}"#).is_err());
        assert!(parse_header_json(br#"{"a":1e3}"#).is_err());
        assert!(parse_header_json(br#"{"a":01}"#).is_err());
        assert!(parse_header_json(br#"{"a":9007199254740992}"#).is_err());
        assert!(parse_header_json(br#"{"a":9007199254740991}"#).is_ok());
    }

    #[test]
    fn framing() {
        assert!(parse_header_json(br#"{}   "#).is_ok());
        assert!(parse_header_json(br#" {}"#).is_err());
        assert!(parse_header_json(b"{}\n").is_err());
        assert!(parse_header_json(b"\xef\xbb\xbf{}").is_err());
        assert!(parse_header_json(br#"{}{}"#).is_err());
        assert!(parse_header_json(br#"{"a":"\ud800"}"#).is_err());
    }

    #[test]
    fn nesting_limit_is_128_levels_counting_objects_and_arrays() {
        // The outermost object is level 1; `{"a":[[...]]}` with k arrays has 1 + k levels.
        let nested = |k: usize| format!("{{\"a\":{}{}}}", "[".repeat(k), "]".repeat(k));
        assert!(parse_header_json(nested(127).as_bytes()).is_ok());
        let err = parse_header_json(nested(128).as_bytes()).unwrap_err();
        assert!(err.contains("128 levels"), "{err}");
        let mut s = String::new();
        for _ in 0..127 {
            s.push_str("{\"a\":");
        }
        s.push_str("{}");
        s.push_str(&"}".repeat(127));
        assert!(parse_header_json(s.as_bytes()).is_ok(), "128 objects");
        let deeper = format!("{{\"b\":{s}}}");
        assert!(parse_header_json(deeper.as_bytes()).is_err(), "129 objects");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let mut s = String::new();
        s.push_str("{\"a\":");
        s.push_str(&"[".repeat(100_000));
        s.push_str(&"]".repeat(100_000));
        s.push('}');
        assert!(parse_header_json(s.as_bytes()).is_err());
    }
}
