//! A settings value tree and its deterministic YAML text.
//!
//! The rendered collector config must be byte-identical on every instance,
//! so we do not hand it to a general-purpose YAML library whose layout and
//! quoting rules could change between versions: maps are ordered
//! (`BTreeMap`), and the emitter below quotes every string that YAML could
//! read as anything but that string.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Serialize, Serializer};

/// A settings value: what TOML can express, minus nothing we need.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
    List(Vec<Value>),
    Map(BTreeMap<String, Value>),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&BTreeMap<String, Value>> {
        match self {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The value at a dotted path (`protocols.grpc`), if present.
    pub fn get_path(&self, path: &str) -> Option<&Value> {
        path.split('.').try_fold(self, |v, seg| v.as_map()?.get(seg))
    }
}

impl From<toml::Value> for Value {
    fn from(v: toml::Value) -> Self {
        match v {
            toml::Value::String(s) => Value::String(s),
            toml::Value::Integer(i) => Value::Int(i),
            toml::Value::Float(f) => Value::Float(f),
            toml::Value::Boolean(b) => Value::Bool(b),
            // A TOML date-time has no YAML equivalent the collector reads the
            // same way; keep its RFC 3339 text.
            toml::Value::Datetime(d) => Value::String(d.to_string()),
            toml::Value::Array(a) => Value::List(a.into_iter().map(Value::from).collect()),
            toml::Value::Table(t) => Value::Map(t.into_iter().map(|(k, v)| (k, Value::from(v))).collect()),
        }
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::Float(f) => s.serialize_f64(*f),
            Value::String(v) => s.serialize_str(v),
            Value::List(l) => l.serialize(s),
            Value::Map(m) => m.serialize(s),
        }
    }
}

/// Append `value` under `key` at `indent` spaces.
pub fn emit_entry(out: &mut String, indent: usize, key: &str, value: &Value) {
    pad(out, indent);
    out.push_str(&scalar_string(key));
    out.push(':');
    emit_after_key(out, indent, value);
}

/// Append a whole map at `indent` spaces (no enclosing key).
pub fn emit_map(out: &mut String, indent: usize, map: &BTreeMap<String, Value>) {
    for (k, v) in map {
        emit_entry(out, indent, k, v);
    }
}

fn emit_after_key(out: &mut String, indent: usize, value: &Value) {
    match value {
        Value::Map(m) if !m.is_empty() => {
            out.push('\n');
            emit_map(out, indent + 2, m);
        }
        Value::List(l) if !l.is_empty() => {
            out.push('\n');
            emit_list(out, indent + 2, l);
        }
        other => {
            out.push(' ');
            out.push_str(&inline(other));
            out.push('\n');
        }
    }
}

fn emit_list(out: &mut String, indent: usize, list: &[Value]) {
    for item in list {
        match item {
            Value::Map(m) if !m.is_empty() => {
                // `- first: x` then the other keys aligned under `first`.
                let mut nested = String::new();
                emit_map(&mut nested, indent + 2, m);
                push_as_item(out, indent, &nested);
            }
            Value::List(l) if !l.is_empty() => {
                let mut nested = String::new();
                emit_list(&mut nested, indent + 2, l);
                push_as_item(out, indent, &nested);
            }
            other => {
                pad(out, indent);
                out.push_str("- ");
                out.push_str(&inline(other));
                out.push('\n');
            }
        }
    }
}

/// `nested` was emitted at `indent + 2`; turn its first line's indentation
/// into the `- ` of a sequence item.
fn push_as_item(out: &mut String, indent: usize, nested: &str) {
    pad(out, indent);
    out.push_str("- ");
    out.push_str(&nested[indent + 2..]);
}

fn pad(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

/// A scalar (or empty collection) on one line.
fn inline(v: &Value) -> String {
    match v {
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => float(*f),
        Value::String(s) => scalar_string(s),
        Value::List(_) => "[]".into(),
        Value::Map(_) => "{}".into(),
    }
}

fn float(f: f64) -> String {
    if f.is_nan() {
        ".nan".into()
    } else if f.is_infinite() {
        if f > 0.0 { ".inf" } else { "-.inf" }.into()
    } else {
        // Debug keeps a fractional part ("1.0"), so YAML reads a float back.
        format!("{f:?}")
    }
}

/// Words YAML 1.1 or 1.2 resolve to booleans or null.
const RESERVED: &[&str] = &["null", "~", "true", "false", "yes", "no", "on", "off", "y", "n"];

/// A string as a plain scalar when that is unambiguous, else double-quoted.
pub fn scalar_string(s: &str) -> String {
    if is_plain_safe(s) {
        s.to_string()
    } else {
        quote(s)
    }
}

/// Conservative: letters, digits and `_ . / @ = + - :`, not starting with a
/// digit or sign (numbers, durations, dates, addresses get quoted), no
/// trailing `:`, and not a reserved word.
fn is_plain_safe(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    if !first.is_ascii_alphabetic() && first != '_' && first != '/' {
        return false;
    }
    if s.ends_with(':') {
        return false;
    }
    if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(s)) {
        return false;
    }
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '@' | '=' | '+' | '-' | ':'))
}

/// A YAML double-quoted scalar; escapes what YAML does not allow raw.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_printable(c) => out.push(c),
            c => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

/// YAML's printable set (spec 1.2, 5.1), minus what needs escaping anyway.
fn is_printable(c: char) -> bool {
    matches!(c as u32,
        0x20..=0x7E | 0x85 | 0xA0..=0xD7FF | 0xE000..=0xFFFD | 0x10000..=0x10FFFF)
        && c != '\u{FEFF}'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, Value)]) -> BTreeMap<String, Value> {
        entries.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    #[test]
    fn strings_that_yaml_would_misread_are_quoted() {
        for s in [
            "",
            "true",
            "No",
            "null",
            "~",
            "5s",
            "0.0.0.0:4317",
            "-x",
            "a b",
            "x: y",
            "#c",
            "${env:KEY}",
            "1e3",
            "key:",
        ] {
            assert!(scalar_string(s).starts_with('"'), "{s:?} should be quoted");
        }
        for s in ["otlp/in", "batch", "https://example.com/v1", "service.name", "a=b"] {
            assert_eq!(scalar_string(s), s);
        }
        assert_eq!(scalar_string("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }

    #[test]
    fn nested_maps_and_lists_have_a_fixed_layout() {
        let v = map(&[
            (
                "b",
                Value::List(vec![Value::Int(1), Value::Float(2.0), Value::Bool(true)]),
            ),
            (
                "a",
                Value::Map(map(&[
                    ("x", Value::String("${env:A}".into())),
                    ("e", Value::Map(BTreeMap::new())),
                ])),
            ),
            (
                "c",
                Value::List(vec![
                    Value::Map(map(&[("k", Value::String("v".into())), ("m", Value::Int(2))])),
                    Value::List(vec![Value::String("p".into())]),
                ]),
            ),
            ("d", Value::List(vec![])),
        ]);
        let mut out = String::new();
        emit_map(&mut out, 0, &v);
        assert_eq!(
            out,
            "a:\n  e: {}\n  x: \"${env:A}\"\nb:\n  - 1\n  - 2.0\n  - true\nc:\n  - k: v\n    m: 2\n  - - p\nd: []\n"
        );
    }
}
