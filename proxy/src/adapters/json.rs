//! JSON bodies read strictly: duplicate object keys (which parsers resolve differently) and
//! trailing bytes are refused.

use super::error::BadRequest;

/// Parses JSON, refusing duplicate object keys (which parsers resolve differently).
pub fn strict(body: &[u8]) -> Result<serde_json::Value, BadRequest> {
    use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};

    struct Strict;
    impl<'de> Visitor<'de> for Strict {
        type Value = serde_json::Value;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = serde_json::Map::new();
            while let Some(key) = map.next_key::<String>()? {
                let value = map.next_value_seed(StrictSeed)?;
                if out.insert(key.clone(), value).is_some() {
                    return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
                }
            }
            Ok(serde_json::Value::Object(out))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(v) = seq.next_element_seed(StrictSeed)? {
                out.push(v);
            }
            Ok(serde_json::Value::Array(out))
        }
        fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
            Ok(v.into())
        }
        fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
            Ok(v.into())
        }
        fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
            Ok(v.into())
        }
        fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
            Ok(serde_json::Number::from_f64(v)
                .map_or(serde_json::Value::Null, serde_json::Value::Number))
        }
        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok(v.into())
        }
        fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
            Ok(v.into())
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(serde_json::Value::Null)
        }
    }
    struct StrictSeed;
    impl<'de> serde::de::DeserializeSeed<'de> for StrictSeed {
        type Value = serde_json::Value;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(Strict)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = de
        .deserialize_any(Strict)
        .map_err(|e| BadRequest::Body("JSON", e.to_string()))?;
    de.end()
        .map_err(|e| BadRequest::Body("JSON", e.to_string()))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_refuses_duplicate_keys_at_any_depth() {
        assert!(strict(br#"{"to":"a","to":"b"}"#).is_err());
        assert!(strict(br#"[{"a":{"b":1,"b":2}}]"#).is_err());
        assert_eq!(
            strict(br#"{"a":[1,{"b":null}]}"#).unwrap()["a"][1]["b"],
            serde_json::Value::Null
        );
        assert!(strict(b"{} trailing").is_err());
    }
}
