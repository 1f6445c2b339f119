//! Label selectors: matching a collector's labels, and the syntax rules for
//! label keys and values (Kubernetes' rules, so selectors read the same way
//! users know from there).

use std::collections::BTreeMap;

use super::schema::{Expression, Operator, Selector};

impl Selector {
    /// Whether a collector with `labels` is selected. An empty selector
    /// selects every collector.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| e.matches(labels))
    }

    /// Syntax problems, as (key path below the selector, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (k, v) in &self.match_labels {
            let path = format!("match_labels.{}", super::key_segment(k));
            if let Err(m) = check_key(k) {
                out.push((path.clone(), m));
            }
            if let Err(m) = check_value(v) {
                out.push((path, m));
            }
        }
        for (i, e) in self.match_expressions.iter().enumerate() {
            let path = format!("match_expressions[{i}]");
            if let Err(m) = check_key(&e.key) {
                out.push((format!("{path}.key"), m));
            }
            match e.operator {
                Operator::In | Operator::NotIn if e.values.is_empty() => out.push((
                    format!("{path}.values"),
                    format!("operator {:?} needs at least one value", e.operator),
                )),
                Operator::Exists | Operator::DoesNotExist if !e.values.is_empty() => out.push((
                    format!("{path}.values"),
                    format!("operator {:?} takes no values", e.operator),
                )),
                _ => {}
            }
            for (j, v) in e.values.iter().enumerate() {
                if let Err(m) = check_value(v) {
                    out.push((format!("{path}.values[{j}]"), m));
                }
            }
        }
        out
    }
}

impl Expression {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// `[prefix/]name`: name of 1-63 characters, alphanumeric at both ends,
/// `-_.` inside; an optional DNS-subdomain prefix.
pub fn check_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        let ok = !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !ok {
            return Err(format!(
                "invalid label key {key:?}: the prefix must be a lower-case DNS subdomain"
            ));
        }
    }
    if name.is_empty() || name.len() > 63 || !is_name(name) {
        return Err(format!(
            "invalid label key {key:?}: 1-63 characters, letters, digits, '-', '_', '.', starting and ending alphanumeric"
        ));
    }
    Ok(())
}

/// Empty, or up to 63 characters of the label-name alphabet.
pub fn check_value(value: &str) -> Result<(), String> {
    if value.is_empty() || (value.len() <= 63 && is_name(value)) {
        Ok(())
    } else {
        Err(format!(
            "invalid label value {value:?}: at most 63 characters, letters, digits, '-', '_', '.', starting and ending alphanumeric"
        ))
    }
}

fn is_name(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    s.chars().next().is_some_and(alnum)
        && s.chars().last().is_some_and(alnum)
        && s.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn expr(key: &str, operator: Operator, values: &[&str]) -> Expression {
        Expression {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn set_based_operators_follow_kubernetes_semantics() {
        let l = labels(&[("env", "prod"), ("os", "linux")]);
        let sel = |e: Expression| Selector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![e],
        };
        assert!(sel(expr("env", Operator::In, &["prod", "stage"])).matches(&l));
        assert!(!sel(expr("env", Operator::In, &["dev"])).matches(&l));
        assert!(!sel(expr("region", Operator::In, &["eu"])).matches(&l));
        assert!(sel(expr("env", Operator::NotIn, &["dev"])).matches(&l));
        assert!(
            sel(expr("region", Operator::NotIn, &["eu"])).matches(&l),
            "absent label is NotIn"
        );
        assert!(!sel(expr("env", Operator::NotIn, &["prod"])).matches(&l));
        assert!(sel(expr("os", Operator::Exists, &[])).matches(&l));
        assert!(!sel(expr("region", Operator::Exists, &[])).matches(&l));
        assert!(sel(expr("region", Operator::DoesNotExist, &[])).matches(&l));
        assert!(Selector::default().matches(&l), "empty selector selects all");
        let both = Selector {
            match_labels: labels(&[("env", "prod")]),
            match_expressions: vec![expr("os", Operator::In, &["windows"])],
        };
        assert!(!both.matches(&l), "every condition must hold");
    }

    #[test]
    fn syntax_is_checked() {
        assert!(check_key("env").is_ok());
        assert!(check_key("linkmesh.io/team").is_ok());
        assert!(check_key("").is_err());
        assert!(check_key("-env").is_err());
        assert!(check_key("Bad_Prefix/x").is_err());
        assert!(check_value("").is_ok());
        assert!(check_value("a b").is_err());
        let s = Selector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![expr("env", Operator::In, &[]), expr("x", Operator::Exists, &["y"])],
        };
        let p = s.problems();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].0, "match_expressions[0].values");
        assert_eq!(p[1].0, "match_expressions[1].values");
    }
}
