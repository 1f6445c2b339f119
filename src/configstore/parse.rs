//! From files to typed resources: every `*.toml` file below the config
//! directory (sorted by path, so "first defined in" is stable), each holding
//! any of the five resource sections. Collects every problem with its file
//! and key path instead of stopping at the first.
//!
//! The same rules apply to a git tree (`super::git`) and to a plain
//! directory (`files_from_dir`, used by `linkmesh validate`): both skip
//! hidden entries and symbolic links.

use std::collections::BTreeSet;
use std::path::Path;

use serde::de::DeserializeOwned;

use super::schema::{Kind, Resources};
use super::{key_segment, ValidationError};

/// One file of the config directory.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Relative to the config directory, `/`-separated.
    pub path: String,
    pub bytes: Vec<u8>,
}

/// Whether a file takes part in the config.
pub(crate) fn is_config_file(name: &str) -> bool {
    name.ends_with(".toml") && !name.starts_with('.')
}

/// Read every config file below `dir` (a plain directory; no git needed).
pub fn files_from_dir(dir: &Path) -> Result<Vec<SourceFile>, ValidationError> {
    let meta = std::fs::metadata(dir)
        .map_err(|e| ValidationError::new("", "", format!("cannot read {}: {e}", dir.display())))?;
    if !meta.is_dir() {
        return Err(ValidationError::new(
            "",
            "",
            format!("{} is not a directory", dir.display()),
        ));
    }
    let mut files = Vec::new();
    walk(dir, "", &mut files)?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

fn walk(dir: &Path, prefix: &str, out: &mut Vec<SourceFile>) -> Result<(), ValidationError> {
    let read_err =
        |p: &Path, e: std::io::Error| ValidationError::new("", "", format!("cannot read {}: {e}", p.display()));
    let entries = std::fs::read_dir(dir).map_err(|e| read_err(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| read_err(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let ft = entry.file_type().map_err(|e| read_err(&entry.path(), e))?;
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        if ft.is_dir() {
            walk(&entry.path(), &rel, out)?;
        } else if ft.is_file() && is_config_file(&name) {
            let bytes = std::fs::read(entry.path()).map_err(|e| read_err(&entry.path(), e))?;
            out.push(SourceFile { path: rel, bytes });
        }
    }
    Ok(())
}

/// What could not be parsed, so that references to it are not reported a
/// second time as dangling.
#[derive(Debug, Default)]
pub struct Unparsed {
    /// Files with a syntax error (their resources are unknown).
    pub files: Vec<String>,
    /// (section, name) of resources whose table had errors.
    pub names: BTreeSet<(String, String)>,
}

/// Parse every file into resources, collecting errors. Resources that fail
/// to parse are left out (their error is recorded).
pub fn parse_files(files: &[SourceFile], errors: &mut Vec<ValidationError>) -> (Resources, Unparsed) {
    let mut res = Resources::default();
    let mut unparsed = Unparsed::default();
    if files.is_empty() {
        errors.push(ValidationError::new(
            "",
            "",
            "no .toml files found: is this the config directory?",
        ));
    }
    for f in files {
        if f.path == super::rollout::POLICY_FILE {
            // Not resources: the rollout policy has its own schema.
            res.rollout = super::rollout::parse(f, errors);
            continue;
        }
        parse_file(f, &mut res, &mut unparsed, errors);
    }
    (res, unparsed)
}

fn parse_file(f: &SourceFile, res: &mut Resources, unparsed: &mut Unparsed, errors: &mut Vec<ValidationError>) {
    let text = match std::str::from_utf8(&f.bytes) {
        Ok(t) => t,
        Err(e) => {
            errors.push(ValidationError::new(&f.path, "", format!("not UTF-8: {e}")));
            unparsed.files.push(f.path.clone());
            return;
        }
    };
    let table: toml::Table = match toml::from_str(text) {
        Ok(t) => t,
        Err(e) => {
            let at = e
                .span()
                .map(|s| {
                    let (line, col) = line_col(text, s.start);
                    format!(" (line {line}, column {col})")
                })
                .unwrap_or_default();
            errors.push(ValidationError::new(
                &f.path,
                "",
                format!("TOML syntax: {}{at}", e.message().trim_end()),
            ));
            unparsed.files.push(f.path.clone());
            return;
        }
    };
    for (section, value) in table {
        let toml::Value::Table(entries) = value else {
            errors.push(ValidationError::new(
                &f.path,
                key_segment(&section),
                "expected a table of named resources",
            ));
            continue;
        };
        match section.as_str() {
            "sources" => components(f, Kind::Source, entries, res, unparsed, errors),
            "processors" => components(f, Kind::Processor, entries, res, unparsed, errors),
            "destinations" => components(f, Kind::Destination, entries, res, unparsed, errors),
            "pipelines" => {
                for (name, v) in entries {
                    let first = res.pipelines.get(&name).map(|p| p.file.clone());
                    match typed::<super::Pipeline>(f, "pipelines", &name, v, first, errors) {
                        Some(mut p) => {
                            p.file = f.path.clone();
                            res.pipelines.insert(name, p);
                        }
                        None => {
                            unparsed.names.insert(("pipelines".into(), name));
                        }
                    }
                }
            }
            "routes" => {
                for (name, v) in entries {
                    let first = res.routes.get(&name).map(|r| r.file.clone());
                    if let Some(mut r) = typed::<super::Route>(f, "routes", &name, v, first, errors) {
                        r.file = f.path.clone();
                        res.routes.insert(name, r);
                    }
                }
            }
            other => errors.push(ValidationError::new(
                &f.path,
                key_segment(other),
                "unknown section; expected sources, processors, destinations, pipelines or routes",
            )),
        }
    }
}

fn components(
    f: &SourceFile,
    kind: Kind,
    entries: toml::Table,
    res: &mut Resources,
    unparsed: &mut Unparsed,
    errors: &mut Vec<ValidationError>,
) {
    for (name, v) in entries {
        let first = res.components(kind).get(&name).map(|c| c.file.clone());
        match typed::<super::Component>(f, kind.section(), &name, v, first, errors) {
            Some(mut c) => {
                c.file = f.path.clone();
                res.components_mut(kind).insert(name, c);
            }
            None => {
                unparsed.names.insert((kind.section().into(), name));
            }
        }
    }
}

/// Deserialize one named resource; `first` is the file that already defined
/// this name (a duplicate).
fn typed<T: DeserializeOwned>(
    f: &SourceFile,
    section: &str,
    name: &str,
    value: toml::Value,
    first: Option<String>,
    errors: &mut Vec<ValidationError>,
) -> Option<T> {
    let prefix = format!("{section}.{}", key_segment(name));
    if let Some(first) = first {
        errors.push(ValidationError::new(
            &f.path,
            prefix,
            format!("duplicate name: {section} {name:?} is already defined in {first}"),
        ));
        return None;
    }
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let inner = e.path().to_string();
            let key = if inner == "." || inner.is_empty() {
                prefix
            } else {
                format!("{prefix}.{inner}")
            };
            errors.push(ValidationError::new(&f.path, key, e.into_inner().message().to_string()));
            None
        }
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, text: &str) -> SourceFile {
        SourceFile {
            path: path.into(),
            bytes: text.as_bytes().to_vec(),
        }
    }

    #[test]
    fn errors_name_file_and_key_path() {
        let mut errors = Vec::new();
        let files = [
            file("a.toml", "[sources.in]\ntype = \"otlp\"\ncolour = 1\n"),
            file("b.toml", "[pipelines.p]\nsignals = [\"traces\"]\nsources = \"in\"\ndestinations = []\n"),
            file("c.toml", "[routes.r]\npipelines = [\"p\"]\nselector.match_expressions = [{ key = \"a\", operator = \"Like\" }]\n"),
            file("d.toml", "[sources.x\n"),
            file("e.toml", "[widgets.w]\n"),
        ];
        let (res, unparsed) = parse_files(&files, &mut errors);
        assert!(res.is_empty());
        assert_eq!(unparsed.files, ["d.toml"]);
        assert!(unparsed.names.contains(&("sources".to_string(), "in".to_string())));
        let got: Vec<(&str, &str)> = errors.iter().map(|e| (e.file.as_str(), e.key.as_str())).collect();
        assert_eq!(
            got,
            [
                ("a.toml", "sources.in.colour"),
                ("b.toml", "pipelines.p.sources"),
                ("c.toml", "routes.r.selector.match_expressions[0].operator"),
                ("d.toml", ""),
                ("e.toml", "widgets"),
            ]
        );
        assert!(errors[0].message.contains("colour"), "{}", errors[0].message);
        assert!(errors[3].message.contains("line 1"), "{}", errors[3].message);
    }

    #[test]
    fn duplicates_across_files_name_the_first_file() {
        let mut errors = Vec::new();
        let files = [
            file("a.toml", "[processors.batch]\ntype = \"batch\"\n"),
            file("z/b.toml", "[processors.batch]\ntype = \"batch\"\n"),
        ];
        let (res, _) = parse_files(&files, &mut errors);
        assert_eq!(res.processors["batch"].file, "a.toml");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].file, "z/b.toml");
        assert_eq!(errors[0].key, "processors.batch");
        assert!(errors[0].message.contains("a.toml"));
    }
}
