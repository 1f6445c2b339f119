//! Git access with gix, and nothing else: where the repository is (local
//! path or remote URL), reading the config files of a commit straight from
//! the object database (no worktree), and fetching a remote into the bare
//! mirror. Never launches the git CLI: local repositories are opened in
//! place (gix's file:// transport would run `git-upload-pack`), and
//! repositories are opened isolated (no system/global git config, no
//! `git` binary lookup). All functions block; callers run them on
//! `spawn_blocking`.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use gix::bstr::ByteSlice;
use sha2::{Digest, Sha256};

use super::parse::{is_config_file, SourceFile};
use super::{ConfigStoreError, Revision, ValidationError};
use crate::clock::Timestamp;

/// Where the config repository is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// Opened in place and watched.
    Local(PathBuf),
    /// Mirrored under the data directory and fetched every poll interval.
    Remote { url: String, scheme: Scheme },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Https,
    Ssh,
    /// The unauthenticated git protocol (internal mirrors, tests).
    Git,
}

/// Classify `config_store.url`.
pub fn locate(url: &str) -> Result<Location, ConfigStoreError> {
    let bad = |message: &str| ConfigStoreError::Url {
        url: redact(url),
        message: message.into(),
    };
    if let Some(rest) = url.strip_prefix("file://") {
        // file:///abs/path or file://localhost/abs/path
        let path = rest.strip_prefix("localhost").unwrap_or(rest);
        if !path.starts_with('/') {
            return Err(bad("a file:// URL needs an absolute path (file:///srv/fleet-config)"));
        }
        return Ok(Location::Local(PathBuf::from(path)));
    }
    let scheme = match url.split_once("://").map(|(s, _)| s) {
        Some("https") => Scheme::Https,
        Some("ssh") => Scheme::Ssh,
        Some("git") => Scheme::Git,
        Some("http") => return Err(bad("plain http is not accepted; use https://")),
        Some(other) => {
            return Err(bad(&format!(
                "unsupported scheme {other:?}; use a path, file://, https:// or ssh://"
            )))
        }
        None => return Ok(Location::Local(PathBuf::from(url))),
    };
    Ok(Location::Remote {
        url: url.to_string(),
        scheme,
    })
}

/// Check `config_store.url` without touching the network (check-config).
pub fn check_url(url: &str) -> Result<(), String> {
    match locate(url) {
        Ok(_) => Ok(()),
        Err(ConfigStoreError::Url { message, .. }) => Err(message),
        Err(e) => Err(e.to_string()),
    }
}

/// The URL without any `user:password@` part, for logs and the API.
pub fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
            match authority.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://***@{host}/{path}"),
                None => url.to_string(),
            }
        }
        None => url.to_string(),
    }
}

/// The mirror of `url` below `<data dir>/config-mirror/`: one bare
/// repository per URL (a changed URL starts a fresh mirror).
pub fn mirror_path(mirror_root: &Path, url: &str) -> PathBuf {
    let digest = hex::encode(Sha256::digest(url.as_bytes()));
    let stem: String = url
        .trim_end_matches('/')
        .trim_end_matches(".git")
        .rsplit(['/', ':'])
        .next()
        .unwrap_or("repo")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(40)
        .collect();
    mirror_root.join(format!("{stem}-{}.git", &digest[..12]))
}

fn git_err(context: &str) -> impl Fn(gix::Error) -> ConfigStoreError + '_ {
    move |e| ConfigStoreError::Git(format!("{context}: {}", chain(&e)))
}

/// An error and its sources on one line ("a: b: c"): the cause of a failed
/// fetch (refused connection, untrusted certificate) is usually a source.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// Open a repository in place, isolated from the environment; `overrides`
/// are git config values (`core.sshCommand=...`).
pub fn open(path: &Path, overrides: Vec<String>) -> Result<gix::Repository, ConfigStoreError> {
    let opts = gix::open::Options::isolated().config_overrides(overrides);
    gix::open_opts(path, opts)
        .map_err(|e| ConfigStoreError::Git(format!("cannot open the git repository at {}: {e:#}", path.display())))
}

/// The commit `refs/heads/<branch>` points at, if the branch exists.
pub fn branch_tip(repo: &gix::Repository, branch: &str) -> Result<Option<gix::ObjectId>, ConfigStoreError> {
    let name = format!("refs/heads/{branch}");
    let context = format!("reading branch {branch:?}");
    let Some(mut r) = repo.try_find_reference(name.as_str()).map_err(git_err(&context))? else {
        return Ok(None);
    };
    let commit = r.peel_to_commit().map_err(git_err(&context))?;
    Ok(Some(commit.id))
}

/// The commit a full or abbreviated (at least 4 hex digits) id names, if
/// the repository has exactly one. Only ids: revision expressions
/// (`HEAD~1`, branch names) would mean different commits on different
/// instances' mirrors.
pub fn resolve_commit(repo: &gix::Repository, id: &str) -> Result<Option<gix::ObjectId>, ConfigStoreError> {
    let id = id.trim();
    if !(4..=40).contains(&id.len()) || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ConfigStoreError::Git(format!(
            "{id:?} is not a commit id (4 to 40 hex digits)"
        )));
    }
    let Ok(found) = repo.rev_parse_single(id) else {
        return Ok(None);
    };
    match found.object().map(|o| o.try_into_commit()) {
        Ok(Ok(c)) => Ok(Some(c.id)),
        _ => Ok(None),
    }
}

/// A commit's revision info and the config files below `dir`.
pub struct CommitFiles {
    pub revision: Revision,
    /// `Err` when `dir` is not a directory in this commit (a content
    /// problem of the commit, reported like any other).
    pub files: Result<Vec<SourceFile>, ValidationError>,
}

pub fn read_commit(
    repo: &gix::Repository,
    id: gix::ObjectId,
    dir: Option<&str>,
) -> Result<CommitFiles, ConfigStoreError> {
    let context = format!("reading commit {id}");
    let err = git_err(&context);
    let commit = repo.find_commit(id).map_err(&err)?;
    let time = commit.time().map_err(&err)?;
    let author = commit.author().map_err(&err)?;
    let revision = Revision {
        commit: id.to_string(),
        time: Timestamp(u64::try_from(time.seconds).unwrap_or(0).saturating_mul(1000)),
        author: format!(
            "{} <{}>",
            author.name.trim().to_str_lossy(),
            author.email.trim().to_str_lossy()
        ),
        message: commit.message_raw_sloppy().to_str_lossy().trim().to_string(),
    };
    let root = commit.tree().map_err(&err)?;
    let dir = dir.map(|d| d.trim_matches('/')).filter(|d| !d.is_empty());
    let tree_id = match dir {
        None => Some(root.id),
        Some(d) => match root.lookup_entry_by_path(d).map_err(&err)? {
            Some(e) if e.mode().is_tree() => Some(e.object_id()),
            _ => None,
        },
    };
    let files = match (tree_id, dir) {
        (Some(t), _) => {
            let mut files = Vec::new();
            walk_tree(repo, t, "", &mut files).map_err(&err)?;
            files.sort_by(|a, b| a.path.cmp(&b.path));
            Ok(files)
        }
        (None, d) => Err(ValidationError::new(
            "",
            "",
            format!(
                "config_store.dir {:?} is not a directory in this commit",
                d.unwrap_or_default()
            ),
        )),
    };
    Ok(CommitFiles { revision, files })
}

/// Collect the config files of a tree; hidden entries, symbolic links and
/// submodules are skipped, as `files_from_dir` skips them.
fn walk_tree(
    repo: &gix::Repository,
    tree: gix::ObjectId,
    prefix: &str,
    out: &mut Vec<SourceFile>,
) -> Result<(), gix::Error> {
    let tree = repo.find_tree(tree)?;
    let decoded = tree.decode()?;
    for entry in &decoded.entries {
        let name = entry.filename.to_str_lossy();
        if name.starts_with('.') {
            continue;
        }
        let path = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        if entry.mode.is_tree() {
            walk_tree(repo, entry.oid.to_owned(), &path, out)?;
        } else if entry.mode.is_blob() && is_config_file(&name) {
            let blob = repo.find_blob(entry.oid.to_owned())?;
            out.push(SourceFile {
                path,
                bytes: blob.data.clone(),
            });
        }
    }
    Ok(())
}

/// Credentials for a remote, read from `config_store.credentials_file`.
#[derive(Clone)]
pub enum Credentials {
    /// https: `username:password`, or a bare token (sent with the user
    /// name `x-access-token`, which GitHub, GitLab and Gitea accept).
    Basic { username: String, password: String },
    /// ssh: the file is the private key itself.
    SshKey(PathBuf),
}

impl Credentials {
    pub fn load(path: &Path, scheme: Scheme) -> Result<Credentials, ConfigStoreError> {
        let cred_err = |message: String| ConfigStoreError::Credentials {
            path: path.display().to_string(),
            message,
        };
        match scheme {
            Scheme::Ssh => Ok(Credentials::SshKey(path.to_path_buf())),
            Scheme::Git => Err(cred_err("the git:// protocol has no authentication".into())),
            Scheme::Https => {
                let text = std::fs::read_to_string(path).map_err(|e| cred_err(e.to_string()))?;
                let line = text.lines().next().unwrap_or("").trim();
                if line.is_empty() {
                    return Err(cred_err("is empty".into()));
                }
                Ok(match line.split_once(':') {
                    Some((u, p)) => Credentials::Basic {
                        username: u.to_string(),
                        password: p.to_string(),
                    },
                    None => Credentials::Basic {
                        username: "x-access-token".into(),
                        password: line.to_string(),
                    },
                })
            }
        }
    }

    /// Git config overrides to open the mirror with.
    pub fn config_overrides(&self) -> Vec<String> {
        match self {
            Credentials::SshKey(key) => {
                let key = key.display().to_string().replace('\'', "'\\''");
                vec![format!(
                    "core.sshCommand=ssh -i '{key}' -o IdentitiesOnly=yes -o BatchMode=yes"
                )]
            }
            Credentials::Basic { .. } => Vec::new(),
        }
    }
}

/// Create the bare mirror if it does not exist yet; open it.
pub fn open_or_init_mirror(path: &Path, overrides: Vec<String>) -> Result<gix::Repository, ConfigStoreError> {
    if !path.join("HEAD").exists() {
        std::fs::create_dir_all(path).map_err(|e| ConfigStoreError::Mirror {
            path: path.display().to_string(),
            source: e,
        })?;
        gix::init_bare(path).map_err(git_err("creating the config mirror"))?;
    }
    open(path, overrides)
}

/// Fetch `branch` of `url` into the mirror's `refs/heads/<branch>`. The
/// refspec is forced (`+`), so a force-pushed or rewound branch replaces
/// the mirrored one.
pub fn fetch(
    repo: &gix::Repository,
    url: &str,
    branch: &str,
    credentials: Option<Credentials>,
    interrupt: &AtomicBool,
) -> Result<(), ConfigStoreError> {
    use gix::remote::Direction;
    let context = format!("fetching {} from {}", branch, redact(url));
    let err = git_err(&context);
    let refspec = format!("+refs/heads/{branch}:refs/heads/{branch}");
    let remote = repo
        .remote_at(url)
        .map_err(&err)?
        .with_refspecs([refspec.as_str()], Direction::Fetch)
        .map_err(&err)?;
    let mut connection = remote.connect(Direction::Fetch).map_err(&err)?;
    if let Some(Credentials::Basic { username, password }) = credentials {
        connection.set_credentials(move |action| match action {
            gix::credentials::helper::Action::Get(ctx) => Ok(Some(gix::credentials::protocol::Outcome {
                identity: gix::sec::identity::Account {
                    username: username.clone(),
                    password: password.clone(),
                    oauth_refresh_token: None,
                },
                next: ctx.into(),
            })),
            _ => Ok(None),
        });
    }
    connection
        .prepare_fetch(gix::progress::Discard, Default::default())
        .map_err(&err)?
        .receive(gix::progress::Discard, interrupt)
        .map_err(&err)?;
    Ok(())
}

/// The directory to watch for ref updates of a local repository.
pub fn refs_dir(repo: &gix::Repository) -> PathBuf {
    repo.common_dir().to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_classified() {
        assert_eq!(locate("/srv/fleet").unwrap(), Location::Local("/srv/fleet".into()));
        assert_eq!(locate("fleet").unwrap(), Location::Local("fleet".into()));
        assert_eq!(
            locate("file:///srv/fleet").unwrap(),
            Location::Local("/srv/fleet".into())
        );
        assert!(matches!(
            locate("https://example.com/org/fleet.git").unwrap(),
            Location::Remote {
                scheme: Scheme::Https,
                ..
            }
        ));
        assert!(matches!(
            locate("ssh://git@example.com/org/fleet.git").unwrap(),
            Location::Remote {
                scheme: Scheme::Ssh,
                ..
            }
        ));
        assert!(locate("http://example.com/x").is_err());
        assert!(locate("ftp://example.com/x").is_err());
        assert!(locate("file://relative").is_err());
    }

    #[test]
    fn credentials_never_show_in_urls() {
        assert_eq!(
            redact("https://user:tok@example.com/org/fleet.git"),
            "https://***@example.com/org/fleet.git"
        );
        assert_eq!(redact("https://example.com/x"), "https://example.com/x");
        let a = mirror_path(Path::new("/d"), "https://example.com/org/fleet.git");
        let b = mirror_path(Path::new("/d"), "https://example.com/other/fleet.git");
        assert_ne!(a, b);
        assert!(a.file_name().unwrap().to_str().unwrap().starts_with("fleet-"));
    }
}
