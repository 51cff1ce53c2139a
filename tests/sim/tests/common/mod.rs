//! Helpers both OpenAPI tests use: OpenAPI 3.0 schemas as JSON Schema, and `$ref`s.

use serde_json::{json, Value};

/// OpenAPI 3.0 `nullable: true` becomes a JSON Schema type union.
pub fn to_json_schema(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = serde_json::Map::new();
            for (k, x) in m {
                if k != "nullable" && k != "example" && k != "examples" {
                    out.insert(k.clone(), to_json_schema(x));
                }
            }
            if m.get("nullable") == Some(&Value::Bool(true)) {
                if let Some(Value::String(t)) = m.get("type") {
                    out.insert("type".into(), json!([t, "null"]));
                } else if m.contains_key("anyOf")
                    || m.contains_key("oneOf")
                    || m.contains_key("allOf")
                {
                    // `nullable` beside a combinator: null is one more choice.
                    let inner = Value::Object(out.clone());
                    return json!({"anyOf": [inner, {"type": "null"}]});
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(to_json_schema).collect()),
        other => other.clone(),
    }
}

pub fn resolve<'a>(spec: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => spec
            .pointer(r.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("bad ref {r}")),
        None => v,
    }
}
