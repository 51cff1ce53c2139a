//! The TOML file: read bounded, parsed with line and column for every problem, each key
//! converted to a value of its kind.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::*;

/// Convert a TOML item to a value of `kind`.
pub(crate) fn from_toml(kind: Kind, item: &toml_edit::Item) -> Result<Value, String> {
    use toml_edit::Value as TV;
    let v = item
        .as_value()
        .ok_or_else(|| "expected a value, found a table".to_string())?;
    let type_name = |v: &TV| match v {
        TV::String(_) => "a string",
        TV::Integer(_) => "an integer",
        TV::Float(_) => "a float",
        TV::Boolean(_) => "a boolean",
        TV::Datetime(_) => "a datetime",
        TV::Array(_) => "an array",
        TV::InlineTable(_) => "a table",
    };
    match (kind, v) {
        (Kind::Str | Kind::Secret | Kind::Path | Kind::Url | Kind::Enum(_), TV::String(s)) => {
            parse_str(kind, s.value())
        }
        (Kind::Bool, TV::Boolean(b)) => Ok(Value::Bool(*b.value())),
        (Kind::Int { .. }, TV::Integer(i)) => {
            let n = *i.value();
            if n < 0 {
                Err(format!("must not be negative, got {n}"))
            } else {
                Ok(Value::Int(n as u64))
            }
        }
        (Kind::Duration { .. }, TV::String(s)) => parse_duration(s.value()).map(Value::Duration),
        (Kind::Duration { .. }, TV::Integer(i)) => {
            let n = *i.value();
            if n < 0 {
                Err(format!("must not be negative, got {n}"))
            } else {
                Ok(Value::Duration(Duration::from_secs(n as u64)))
            }
        }
        (Kind::List, TV::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("expected an array of strings, found {}", type_name(x)))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Value::List),
        (Kind::Map, TV::InlineTable(t)) => t
            .iter()
            .map(|(k, x)| {
                x.as_str()
                    .map(|s| (k.to_string(), s.to_string()))
                    .ok_or_else(|| format!("expected string values, {k} is {}", type_name(x)))
            })
            .collect::<Result<BTreeMap<_, _>, _>>()
            .map(Value::Map),
        (k, other) => Err(format!(
            "expected {}, found {}",
            match k {
                Kind::Str | Kind::Secret | Kind::Path | Kind::Url | Kind::Enum(_) => "a string",
                Kind::Bool => "a boolean",
                Kind::Int { .. } => "an integer",
                Kind::Duration { .. } => "a duration string like \"15m\" or seconds",
                Kind::List => "an array of strings",
                Kind::Map => "a table of strings",
            },
            type_name(other)
        )),
    }
}

pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Read the TOML file into layered values, collecting errors.
pub(crate) fn read_file(path: &Path, text: &str, out: &mut Layered, errors: &mut Vec<ConfigError>) {
    let doc = match toml_edit::ImDocument::parse(text.to_string()) {
        Ok(d) => d,
        Err(e) => {
            let (line, col) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
            errors.push(ConfigError {
                key: path.display().to_string(),
                source: Some(format!("line {line}, column {col}")),
                message: format!("malformed TOML: {}", e.message().trim()),
            });
            return;
        }
    };
    let at = |span: Option<std::ops::Range<usize>>| {
        let (line, col) = span.map(|s| line_col(text, s.start)).unwrap_or((0, 0));
        (line, format!("{}:{line}:{col}", path.display()))
    };
    for (section, item) in doc.as_table().iter() {
        let Some(table) = item.as_table() else {
            let (_, src) = at(doc
                .as_table()
                .get_key_value(section)
                .and_then(|(k, _)| k.span()));
            errors.push(ConfigError {
                key: section.to_string(),
                source: Some(src),
                message: if KEYS.iter().any(|k| k.section == section) {
                    format!("expected a [{section}] table")
                } else {
                    format!(
                        "unknown key (top-level keys must be in a section: {})",
                        sections().join(", ")
                    )
                },
            });
            continue;
        };
        if !KEYS.iter().any(|k| k.section == section) {
            errors.push(ConfigError {
                key: format!("[{section}]"),
                source: Some(at(table.span()).1),
                message: format!(
                    "unknown section; known sections are {}",
                    sections().join(", ")
                ),
            });
            continue;
        }
        for (key, value) in table.iter() {
            let kspan = table.get_key_value(key).and_then(|(k, _)| k.span());
            let (line, src) = at(kspan.or_else(|| value.span()));
            match read_key(section, key, value) {
                Ok((dotted, v)) => {
                    let source = Source::File {
                        path: path.to_path_buf(),
                        line,
                    };
                    out.insert(dotted, (v, source));
                }
                Err((dotted, message)) => errors.push(ConfigError {
                    key: dotted,
                    source: Some(src),
                    message,
                }),
            }
        }
    }
}

/// One key of a known section: `section.key` and its value, or the problem with it.
fn read_key(
    section: &str,
    key: &str,
    value: &toml_edit::Item,
) -> Result<(String, Value), (String, String)> {
    let dotted = format!("{section}.{key}");
    let Some(sp) = spec(&dotted) else {
        let known: Vec<&str> = KEYS
            .iter()
            .filter(|k| k.section == section)
            .map(|k| k.key)
            .collect();
        let hint = did_you_mean(key, known.iter().copied())
            .map(|k| format!("did you mean {k}? "))
            .unwrap_or_default();
        let message = format!("unknown key; {hint}[{section}] has {}", known.join(", "));
        return Err((dotted, message));
    };
    match from_toml(sp.kind, value) {
        Ok(v) => Ok((dotted, v)),
        Err(m) => Err((dotted, m)),
    }
}

pub(crate) fn sections() -> Vec<&'static str> {
    let mut s: Vec<&str> = KEYS.iter().map(|k| k.section).collect();
    s.dedup();
    s
}

/// The largest configuration file read.
pub(crate) const MAX_CONFIG_FILE: u64 = 1 << 20;
/// The largest token file read (a token is at most a few hundred bytes).
pub(crate) const MAX_TOKEN_FILE: u64 = 64 << 10;

/// Read at most `limit` bytes of `path` as UTF-8: a device such as /dev/zero, or a file
/// far too large, is an error rather than a hang.
pub fn read_bounded(path: &Path, limit: u64) -> Result<String, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| format!("cannot read it: {e}"))?;
    let mut buf = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if buf.len() as u64 > limit {
        return Err(format!(
            "it is larger than {} KiB: not a file this setting can hold",
            limit >> 10
        ));
    }
    String::from_utf8(buf).map_err(|_| "it is not UTF-8 text".to_string())
}
