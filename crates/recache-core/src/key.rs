//! Canonical cache keys.
//!
//! A key is SHA-256 over the tenant, namespace, endpoint and the canonical
//! form of the request body: object keys sorted, no whitespace, numbers with
//! an integral value written as integers. Every field counts, unknown ones
//! included, except the transport fields in [`TRANSPORT_FIELDS`].

use std::fmt;

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Request fields that change how the answer is delivered, not what it is.
pub const TRANSPORT_FIELDS: &[&str] = &["stream", "stream_options"];

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(pub [u8; 32]);

impl CacheKey {
    pub fn hex(&self) -> String {
        hex32(&self.0)
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({})", &self.hex()[..16])
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

/// The canonical JSON text of a request body, transport fields removed.
pub fn canonical_request(body: &Value) -> String {
    let mut out = String::with_capacity(256);
    match body {
        Value::Object(map) => {
            out.push('{');
            let mut first = true;
            // serde_json's Map is a BTreeMap here: iteration is in key order.
            for (k, v) in map {
                if TRANSPORT_FIELDS.contains(&k.as_str()) {
                    continue;
                }
                if !first {
                    out.push(',');
                }
                first = false;
                write_json_string(&mut out, k);
                out.push(':');
                write_canonical(&mut out, v);
            }
            out.push('}');
        }
        other => write_canonical(&mut out, other),
    }
    out
}

fn write_canonical(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
                if f.fract() == 0.0 && f.abs() < 9.0e15 {
                    out.push_str(&(f as i64).to_string());
                    return;
                }
            }
            out.push_str(&n.to_string());
        }
        Value::String(s) => write_json_string(out, s),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(out, x);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, x)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json_string(out, k);
                out.push(':');
                write_canonical(out, x);
            }
            out.push('}');
        }
    }
}

fn write_json_string(out: &mut String, s: &str) {
    // serde_json's string escaping is canonical for a given string.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

/// Lower-case hex of 32 bytes, through a lookup table (keys and artifact ids
/// are encoded on every response header, audit row and backup line; the
/// `hex` crate's char iterator was a visible cost there).
pub fn hex32(b: &[u8; 32]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 64];
    for (i, x) in b.iter().enumerate() {
        out[2 * i] = DIGITS[(x >> 4) as usize];
        out[2 * i + 1] = DIGITS[(x & 0xf) as usize];
    }
    // Only ASCII digits were written.
    String::from_utf8(out.to_vec()).unwrap_or_default()
}

/// Derives the cache key. Each part is length-prefixed so no two different
/// tuples can produce the same byte stream.
pub fn cache_key(tenant: &str, namespace: &str, endpoint: &str, canonical: &str) -> CacheKey {
    let mut h = Sha256::new();
    h.update(b"recache-key-v1");
    for part in [tenant, namespace, endpoint, canonical] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    CacheKey(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn key_of(text: &str) -> CacheKey {
        let v: Value = serde_json::from_str(text).unwrap();
        cache_key("t", "default", "chat", &canonical_request(&v))
    }

    #[test]
    fn order_whitespace_and_stream_do_not_matter() {
        let a = key_of(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":1}"#);
        let b = key_of(
            r#"{ "temperature" : 1.0, "stream": true,
              "messages" : [ { "content":"hi", "role":"user" } ], "model":"m", "stream_options": {"include_usage": true} }"#,
        );
        assert_eq!(a, b);
    }

    #[test]
    fn hex32_matches_the_hex_crate() {
        let mut b = [0u8; 32];
        for (i, x) in b.iter_mut().enumerate() {
            *x = (i as u8).wrapping_mul(37).wrapping_add(250);
        }
        assert_eq!(hex32(&b), hex::encode(b));
    }

    #[test]
    fn tenant_namespace_endpoint_separate_keys() {
        let c = canonical_request(&json!({"model": "m"}));
        let k = cache_key("a", "n", "chat", &c);
        assert_ne!(k, cache_key("b", "n", "chat", &c));
        assert_ne!(k, cache_key("a", "m", "chat", &c));
        assert_ne!(k, cache_key("a", "n", "completions", &c));
        // Length prefixes: moving a boundary changes the key.
        assert_ne!(cache_key("ab", "c", "e", &c), cache_key("a", "bc", "e", &c));
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(|i| json!(i)),
            (-1000.0f64..1000.0).prop_map(|f| json!(f)),
            "[a-zA-Z0-9 _\\-\u{e9}\u{4e2d}]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Serialises with object keys in reverse order and random-ish whitespace.
    fn scramble(v: &Value, pad: &str) -> String {
        match v {
            Value::Object(m) => {
                let parts: Vec<String> = m
                    .iter()
                    .rev()
                    .map(|(k, x)| {
                        format!(
                            "{pad}{}{pad}:{pad}{}",
                            serde_json::to_string(k).unwrap(),
                            scramble(x, pad)
                        )
                    })
                    .collect();
                format!("{{{}{pad}}}", parts.join(","))
            }
            Value::Array(a) => {
                let parts: Vec<String> = a.iter().map(|x| format!("{pad}{}", scramble(x, pad))).collect();
                format!("[{}{pad}]", parts.join(","))
            }
            other => other.to_string(),
        }
    }

    proptest! {
        #[test]
        fn key_order_and_whitespace_share_a_key(
            fields in prop::collection::btree_map("[a-z_]{1,10}", arb_json(), 0..6),
            pad in "[ \t\n]{0,3}",
        ) {
            let mut obj = serde_json::Map::new();
            obj.insert("model".into(), json!("gpt-x"));
            for (k, v) in fields { obj.insert(k, v); }
            let v = Value::Object(obj);
            let text_a = serde_json::to_string(&v).unwrap();
            let text_b = scramble(&v, &pad);
            prop_assert_eq!(key_of(&text_a), key_of(&text_b));
        }

        #[test]
        fn changing_any_other_field_changes_the_key(
            fields in prop::collection::btree_map("[a-z_]{1,10}", arb_json(), 1..6),
            pick in any::<prop::sample::Index>(),
            replacement in arb_json(),
        ) {
            let mut obj = serde_json::Map::new();
            obj.insert("model".into(), json!("gpt-x"));
            for (k, v) in fields { obj.insert(k, v); }
            let names: Vec<String> = obj.keys().filter(|k| !TRANSPORT_FIELDS.contains(&k.as_str())).cloned().collect();
            let name = pick.get(&names).clone();
            let before = Value::Object(obj.clone());
            let old = obj.get(&name).cloned().unwrap();
            // Equal-by-canonical-form values (1 vs 1.0) are the same answer; skip those.
            prop_assume!(canonical_request(&json!({"x": old})) != canonical_request(&json!({"x": replacement.clone()})));
            obj.insert(name, replacement);
            let after = Value::Object(obj);
            prop_assert_ne!(key_of(&before.to_string()), key_of(&after.to_string()));
            // Adding an unknown field changes it too.
            let mut extra = before.as_object().unwrap().clone();
            extra.insert("zz_unknown_field".into(), json!(1));
            prop_assert_ne!(key_of(&before.to_string()), key_of(&Value::Object(extra).to_string()));
        }
    }
}
