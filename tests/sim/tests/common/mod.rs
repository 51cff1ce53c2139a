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
                    // A nullable enum takes null too (OpenAPI 3.0 reads it so).
                    if let Some(Value::Array(e)) = out.get_mut("enum") {
                        if !e.contains(&Value::Null) {
                            e.push(Value::Null);
                        }
                    }
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

/// Our copy in `openapi/` equals the shared contract in `../shared/github-api/`, when
/// that is present (it is not in a clean checkout of this repository alone).
pub fn assert_copy_matches(name: &str, ours: &Value) {
    let shared = format!(
        "{}/../../../shared/github-api/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    if let Ok(text) = std::fs::read_to_string(shared) {
        assert_eq!(
            &serde_json::from_str::<Value>(&text).unwrap(),
            ours,
            "openapi/{name} is stale: copy it from shared/"
        );
    }
}
