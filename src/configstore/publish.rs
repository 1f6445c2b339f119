//! Route drafts against the running store: read the draft's base commit
//! from the repository the store serves, preview the draft (`super::draft`),
//! and turn it into a commit on the served branch of a *local* repository
//! (opt-in: `config_store.allow_publish`) or into a `git am`-able patch.
//!
//! A published commit is an ordinary commit: the store's watcher picks it
//! up and validates and serves it like any other. The branch is updated
//! with compare-and-swap on its ref (gix takes the ref lock), so a branch
//! that moved since the draft's base is refused, never overwritten. All
//! git work is gix; never the git CLI.

use std::path::PathBuf;

use gix::bstr::BString;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::draft::{self, FileEdit, FleetImpact, RouteChange, Target};
use super::git::{self, Location};
use super::parse::SourceFile;
use super::{load_files, ConfigStoreError, ConfigStoreHandle, Resources, Revision, ValidationError};
use crate::clock::Timestamp;

/// Where the store reads commits from (see `ConfigStoreHandle::repository`).
#[derive(Debug, Clone)]
pub struct Repository {
    /// The local repository, or the mirror of a remote one.
    pub path: PathBuf,
    pub local: bool,
    pub branch: String,
    pub dir: Option<String>,
    pub allow_publish: bool,
}

/// Whether `config_store.url` names a remote repository (used by the
/// server config's validation: publishing needs a local one).
pub fn is_remote_url(url: &str) -> bool {
    matches!(git::locate(url), Ok(Location::Remote { .. }))
}

/// Route changes on top of a commit.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Draft {
    /// The commit the draft was made on (normally the served one).
    pub base_commit: String,
    pub changes: Vec<RouteChange>,
}

/// The diff of one file the draft changes.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FileDiff {
    /// Relative to the config directory.
    pub file: String,
    /// `true` when the draft creates the file.
    pub new: bool,
    /// Unified diff.
    pub diff: String,
}

/// Whether this instance can publish drafts, and if not why.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PublishMode {
    pub allowed: bool,
    /// What to do instead, when not allowed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A patch can always be downloaded.
    pub patch: bool,
}

/// What a draft would do.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Preview {
    pub base: Revision,
    /// The commit the fleet gets now.
    pub serving: Option<String>,
    /// `true` when the base is not the served commit: the impact is
    /// against the base, and publishing would be refused.
    pub stale: bool,
    /// Every rule of the config store holds for the config after the
    /// draft.
    pub valid: bool,
    /// Every problem, with file and key path.
    pub errors: Vec<ValidationError>,
    pub files: Vec<FileDiff>,
    /// Only for a valid draft.
    pub impact: Option<FleetImpact>,
    pub publish: PublishMode,
}

/// A published draft.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Published {
    /// The new commit on the served branch.
    pub commit: String,
    pub branch: String,
    pub parent: String,
    pub files: Vec<String>,
}

/// Who a commit or patch is by.
#[derive(Debug, Clone)]
pub struct Author {
    pub name: String,
    pub email: String,
}

impl Author {
    /// A LinkMesh user: users have no e-mail address, so the address is
    /// the user name at the reserved `.invalid` domain (RFC 2606).
    pub fn user(username: &str) -> Author {
        Author {
            name: username.to_string(),
            email: format!("{username}@linkmesh.invalid"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DraftError {
    #[error("base_commit {0:?} is not a commit of the config repository")]
    UnknownBase(String),
    #[error("the draft is invalid ({} problem(s)); see errors", .0.len())]
    Invalid(Vec<ValidationError>),
    #[error("the draft changes nothing")]
    Empty,
    #[error("branch {branch:?} moved since the draft's base commit (it is now at {current}); the draft was not published: preview it again on the new commit")]
    Moved { branch: String, current: String },
    #[error("{0}")]
    NotAllowed(String),
    #[error(transparent)]
    Store(#[from] ConfigStoreError),
}

/// The base commit, read and parsed.
struct Base {
    revision: Revision,
    files: Vec<SourceFile>,
    /// `None` when the base commit itself is invalid.
    resources: Option<Resources>,
}

/// A draft applied to its base: valid, with its edits.
struct Checked {
    base: Base,
    edits: Vec<FileEdit>,
    result: Result<Resources, Vec<ValidationError>>,
}

fn git_err(context: &str) -> impl Fn(gix::Error) -> ConfigStoreError + '_ {
    move |e| ConfigStoreError::Git(format!("{context}: {e}"))
}

fn task_err(e: tokio::task::JoinError) -> DraftError {
    DraftError::Store(ConfigStoreError::Task(e.to_string()))
}

fn parse_id(hex: &str) -> Result<gix::ObjectId, DraftError> {
    gix::ObjectId::from_hex(hex.trim().as_bytes()).map_err(|_| DraftError::UnknownBase(hex.to_string()))
}

fn read_base(repo: &gix::Repository, dir: Option<&str>, hex: &str) -> Result<Base, DraftError> {
    let id = parse_id(hex)?;
    if repo.find_commit(id).is_err() {
        return Err(DraftError::UnknownBase(hex.to_string()));
    }
    let c = git::read_commit(repo, id, dir)?;
    let files = c.files.map_err(|e| DraftError::Invalid(vec![e]))?;
    let resources = load_files(&files).ok();
    Ok(Base {
        revision: c.revision,
        files,
        resources,
    })
}

fn check(repo: &Repository, draft: &Draft) -> Result<Checked, DraftError> {
    let r = git::open(&repo.path, Vec::new())?;
    let base = read_base(&r, repo.dir.as_deref(), &draft.base_commit)?;
    let applied = draft::apply(&base.files, base.resources.as_ref(), &draft.changes).map_err(DraftError::Invalid)?;
    Ok(Checked {
        base,
        edits: applied.edits,
        result: applied.result,
    })
}

fn diffs(edits: &[FileEdit]) -> Vec<FileDiff> {
    edits
        .iter()
        .map(|e| FileDiff {
            file: e.path.clone(),
            new: e.before.is_none(),
            diff: draft::unified_diff(&e.path, e.before.as_deref(), &e.after),
        })
        .collect()
}

/// The path of a config file relative to the repository root.
fn repo_path(dir: Option<&str>, file: &str) -> String {
    match dir.map(|d| d.trim_matches('/')).filter(|d| !d.is_empty()) {
        Some(d) => format!("{d}/{file}"),
        None => file.to_string(),
    }
}

/// The commit message: the user's, or one naming the routes changed.
fn message(draft: &Draft, given: Option<&str>) -> String {
    if let Some(m) = given.map(str::trim).filter(|m| !m.is_empty()) {
        return format!("{m}\n");
    }
    let mut set = Vec::new();
    let mut removed = Vec::new();
    for c in &draft.changes {
        match c {
            RouteChange::Set { name, .. } => set.push(name.as_str()),
            RouteChange::Remove { name } => removed.push(name.as_str()),
        }
    }
    let mut parts = Vec::new();
    if !set.is_empty() {
        parts.push(format!("update {}", set.join(", ")));
    }
    if !removed.is_empty() {
        parts.push(format!("remove {}", removed.join(", ")));
    }
    format!("Routes: {}\n\nMade on the LinkMesh routing canvas.\n", parts.join("; "))
}

fn signature(a: &Author, at: Timestamp) -> gix::actor::Signature {
    gix::actor::Signature {
        name: BString::from(a.name.as_str()),
        email: BString::from(a.email.as_str()),
        time: gix::date::Time::new((at.0 / 1000) as i64, 0),
    }
}

impl ConfigStoreHandle {
    /// Whether drafts can be published here.
    pub fn publish_mode(&self) -> PublishMode {
        let repo = self.repository();
        let reason = if !repo.local {
            Some("the config repository is remote: download the draft as a patch and push it there".to_string())
        } else if !repo.allow_publish {
            Some("publishing is off for this config store (config_store.allow_publish = false): download the draft as a patch".to_string())
        } else {
            None
        };
        PublishMode {
            allowed: reason.is_none(),
            reason,
            patch: true,
        }
    }

    /// Apply a draft to its base and say what it would do to `targets`
    /// (every registered collector); `focus` picks the collector of the
    /// render diff.
    pub async fn preview(
        &self,
        draft: Draft,
        targets: Vec<Target>,
        focus: Option<String>,
    ) -> Result<Preview, DraftError> {
        let repo = self.repository();
        let serving = self.current().map(|s| s.revision.commit.clone());
        let publish = self.publish_mode();
        tokio::task::spawn_blocking(move || {
            let checked = check(&repo, &draft)?;
            let files = diffs(&checked.edits);
            let stale = serving.as_deref() != Some(checked.base.revision.commit.as_str());
            let empty = Resources::default();
            let before = checked.base.resources.as_ref().unwrap_or(&empty);
            let (valid, errors, impact) = match &checked.result {
                Ok(after) => (
                    true,
                    Vec::new(),
                    Some(draft::impact(
                        before,
                        after,
                        &checked.base.revision.commit,
                        &targets,
                        focus.as_deref(),
                    )),
                ),
                Err(e) => (false, e.clone(), None),
            };
            Ok(Preview {
                base: checked.base.revision,
                serving,
                stale,
                valid,
                errors,
                files,
                impact,
                publish,
            })
        })
        .await
        .map_err(task_err)?
    }

    /// Commit a valid draft on the served branch of the local repository,
    /// as `author`; the store then loads it like any commit.
    pub async fn publish(
        &self,
        draft: Draft,
        author: Author,
        committer: Author,
        msg: Option<String>,
        at: Timestamp,
    ) -> Result<Published, DraftError> {
        let mode = self.publish_mode();
        if let Some(reason) = mode.reason {
            return Err(DraftError::NotAllowed(reason));
        }
        let repo = self.repository();
        let published =
            tokio::task::spawn_blocking(move || commit(&repo, &draft, &author, &committer, msg.as_deref(), at))
                .await
                .map_err(task_err)??;
        // The watcher sees the ref change too; this makes it immediate.
        self.refresh();
        Ok(published)
    }

    /// A valid draft as a `git am`-able patch (mbox, one commit).
    pub async fn patch(
        &self,
        draft: Draft,
        author: Author,
        msg: Option<String>,
        at: Timestamp,
    ) -> Result<String, DraftError> {
        let repo = self.repository();
        tokio::task::spawn_blocking(move || {
            let checked = check(&repo, &draft)?;
            valid_edits(&checked)?;
            Ok(format_patch(
                &repo,
                &checked,
                &author,
                &message(&draft, msg.as_deref()),
                at,
            ))
        })
        .await
        .map_err(task_err)?
    }
}

fn valid_edits(c: &Checked) -> Result<(), DraftError> {
    if let Err(e) = &c.result {
        return Err(DraftError::Invalid(e.clone()));
    }
    if c.edits.is_empty() {
        return Err(DraftError::Empty);
    }
    Ok(())
}

fn commit(
    repo: &Repository,
    draft: &Draft,
    author: &Author,
    committer: &Author,
    msg: Option<&str>,
    at: Timestamp,
) -> Result<Published, DraftError> {
    // An invalid draft says so whatever the repository's state.
    let checked = check(repo, draft)?;
    valid_edits(&checked)?;
    let r = git::open(&repo.path, Vec::new())?;
    let branch_ref = format!("refs/heads/{}", repo.branch);
    // Like git's receive.denyCurrentBranch: moving a branch that a work
    // tree has checked out would leave that checkout showing our change
    // reverted as someone's uncommitted edit.
    if !r.is_bare() {
        let head = r.head_name().map_err(git_err("reading HEAD"))?;
        if head.is_some_and(|h| h.as_bstr() == branch_ref.as_str()) {
            return Err(DraftError::NotAllowed(format!(
                "branch {:?} is checked out in the work tree at {}; publishing would make that checkout stale. Serve a bare repository (or another branch) to publish",
                repo.branch,
                repo.path.display()
            )));
        }
    }
    let base_id = parse_id(&draft.base_commit)?;
    let moved = |current: Option<gix::ObjectId>| DraftError::Moved {
        branch: repo.branch.clone(),
        current: current.map_or_else(|| "nothing (deleted)".into(), |c| c.to_string()),
    };
    let tip = git::branch_tip(&r, &repo.branch)?;
    if tip != Some(base_id) {
        return Err(moved(tip));
    }

    let context = "writing the draft's commit";
    let err = git_err(context);
    let base_commit = r.find_commit(base_id).map_err(&err)?;
    let mut editor = r.edit_tree(base_commit.tree_id().map_err(&err)?).map_err(&err)?;
    let mut files = Vec::new();
    for e in &checked.edits {
        let blob = r.write_blob(e.after.as_bytes()).map_err(&err)?;
        let path = repo_path(repo.dir.as_deref(), &e.path);
        editor
            .upsert(path.as_str(), gix::object::tree::EntryKind::Blob, blob.detach())
            .map_err(&err)?;
        files.push(path);
    }
    let tree = editor.write().map_err(&err)?.detach();
    let commit = gix::objs::Commit {
        tree,
        parents: [base_id].into_iter().collect(),
        author: signature(author, at),
        committer: signature(committer, at),
        encoding: None,
        message: message(draft, msg).into(),
        extra_headers: Vec::new(),
    };
    let id = r.write_object(&commit).map_err(&err)?.detach();
    // Compare-and-swap under the ref lock: a commit that landed between
    // the tip check above and here makes this fail instead of being lost.
    let swapped = r.reference(
        branch_ref.as_str(),
        id,
        gix::refs::transaction::PreviousValue::MustExistAndMatch(gix::refs::Target::Object(base_id)),
        format!("commit: {}", commit.message.to_string().lines().next().unwrap_or("")),
    );
    if let Err(e) = swapped {
        let now = git::branch_tip(&r, &repo.branch)?;
        if now != Some(base_id) {
            return Err(moved(now));
        }
        return Err(git_err("updating the branch")(e).into());
    }
    tracing::info!(commit = %id, parent = %base_id, branch = %repo.branch, author = %author.name,
        files = files.len(), "Published a route draft as a commit.");
    Ok(Published {
        commit: id.to_string(),
        branch: repo.branch.clone(),
        parent: base_id.to_string(),
        files,
    })
}

/// `git format-patch` output for one commit: `git am` applies it on the
/// base commit.
fn format_patch(repo: &Repository, c: &Checked, author: &Author, message: &str, at: Timestamp) -> String {
    let date = gix::date::Time::new((at.0 / 1000) as i64, 0).format_or_unix(gix::date::time::format::RFC2822);
    let (subject, body) = message.split_once('\n').unwrap_or((message, ""));
    let mut out = format!(
        "From {} Mon Sep 17 00:00:00 2001\nFrom: {} <{}>\nDate: {date}\nSubject: [PATCH] {subject}\n",
        c.base.revision.commit, author.name, author.email
    );
    let body = body.trim();
    if !body.is_empty() {
        out.push('\n');
        out.push_str(body);
        out.push('\n');
    }
    out.push_str("---\n");
    for e in &c.edits {
        let path = repo_path(repo.dir.as_deref(), &e.path);
        out.push_str(&format!("diff --git a/{path} b/{path}\n"));
        if e.before.is_none() {
            out.push_str("new file mode 100644\n");
        }
        out.push_str(&draft::unified_diff(&path, e.before.as_deref(), &e.after));
    }
    out.push_str(&format!("\nbase-commit: {}\n-- \nLinkMesh\n\n", c.base.revision.commit));
    out
}
