//! JSON the way Python's `json.dumps(..., ensure_ascii=False)` writes it, which is what
//! `tojson` produces under `transformers` and so what models saw in training: `", "` and
//! `": "` separators, and no HTML escaping (minijinja's own `tojson` writes `\u003c` for
//! `<`, which turns `<tool_call>` in a description into noise).

use minijinja::value::{Kwargs, Value};
use minijinja::{Error, ErrorKind};
use serde_json::Value as Json;

pub(crate) fn dumps(value: &Json, indent: Option<usize>) -> String {
    let mut out = String::new();
    write(value, indent, 0, &mut out);
    out
}

fn write(value: &Json, indent: Option<usize>, level: usize, out: &mut String) {
    let newline = |out: &mut String, level: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', n * level));
        }
    };
    // With an indent Python ends items with the newline, so the comma has no space.
    let item_sep = if indent.is_some() { "," } else { ", " };
    match value {
        Json::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                write(item, indent, level + 1, out);
            }
            newline(out, level);
            out.push(']');
        }
        Json::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                out.push_str(&Json::String(key.clone()).to_string());
                out.push_str(": ");
                write(item, indent, level + 1, out);
            }
            newline(out, level);
            out.push('}');
        }
        // Scalars and empty containers print the same in both.
        other => out.push_str(&other.to_string()),
    }
}

/// The `tojson` filter, replacing minijinja's. `indent` may be given by position or name;
/// other Python keywords (`ensure_ascii`, `sort_keys`, `separators`) are accepted and ignored.
pub(crate) fn tojson_filter(
    value: &Value,
    indent: Option<Value>,
    kwargs: Kwargs,
) -> Result<Value, Error> {
    let indent = match indent {
        Some(v) => Some(v),
        None => kwargs.get::<Option<Value>>("indent")?,
    };
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => Some(usize::try_from(v).map_err(|_| {
            Error::new(
                ErrorKind::InvalidOperation,
                "tojson: indent must be a number",
            )
        })?),
    };
    let json = serde_json::to_value(value).map_err(|e| {
        Error::new(ErrorKind::InvalidOperation, "cannot serialize to JSON").with_source(e)
    })?;
    Ok(Value::from_safe_string(dumps(&json, indent)))
}

#[cfg(test)]
mod tests {
    use super::dumps;
    use serde_json::json;

    #[test]
    fn compact_like_python() {
        let v = json!({"a": [1, "x<y>"], "b": {}, "c": [], "d": null, "e": "é"});
        assert_eq!(
            dumps(&v, None),
            r#"{"a": [1, "x<y>"], "b": {}, "c": [], "d": null, "e": "é"}"#
        );
    }

    #[test]
    fn indented_like_python() {
        let v = json!({"a": [1, 2], "b": {"c": true}});
        assert_eq!(
            dumps(&v, Some(2)),
            "{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": {\n    \"c\": true\n  }\n}"
        );
    }
}
