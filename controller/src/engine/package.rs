//! What a deploy ships and to whom: the package (full artifact, deltas from git, or the artifact
//! streamed while packaged) and each host's upload, planned from what the hosts hold.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use slipway_common::ReleaseId;
use slipway_common::config::EnvSettings;
use slipway_proto::pb;
use tokio::sync::watch;

use crate::engine::client::{self, AgentClient};
use crate::engine::events::Emitter;
use crate::error::{Context, CtlError, Result};
use crate::source::artifact::{self, Artifact};
use crate::source::build::{self, Recipe};
use crate::source::git;
use crate::state::home::Home;
use crate::state::store::{AgentRecord, ArtifactSummary, DeployRecord};
use crate::units::{bytes, millis};

use super::fanout::*;
use super::scope::*;

/// What one host is sent: a package file (the full artifact, or a delta), or the full artifact
/// while it is being packaged.
#[derive(Debug, Clone)]
pub(crate) enum Upload {
    /// `base`: a delta's manifest travels as a diff against a release the host holds.
    File {
        path: PathBuf,
        sha256: String,
        size: u64,
        delta: bool,
        base: Option<Arc<Base>>,
    },
    Streamed {
        file: Arc<std::fs::File>,
        progress: watch::Receiver<artifact::PackProgress>,
    },
}

/// A release a host holds whose manifest the controller knows: the new manifest is sent as a diff
/// against it.
#[derive(Debug)]
pub(crate) struct Base {
    pub(crate) release: ReleaseId,
    pub(crate) manifest_sha256: Vec<u8>,
    pub(crate) diff: pb::ManifestDiff,
}

/// What a host holds, as its inventory lets the controller work out.
struct Holdings {
    /// Content digests (hex) the host can reuse.
    held: std::collections::HashSet<String>,
    /// The newest retained release with a known manifest.
    base: Option<(ReleaseId, Vec<u8>, Arc<slipway_common::archive::Manifest>)>,
}

/// What one deploy has worked out about hosts, shared by all of them: each kept manifest is read
/// and verified once, and hosts that answer the same inventory (the usual fleet) share one
/// `Holdings`, so the controller's work per host stays small.
#[derive(Default)]
struct Known {
    manifests: std::sync::Mutex<std::collections::HashMap<Vec<u8>, Option<Arc<slipway_common::archive::Manifest>>>>,
    holdings: std::sync::Mutex<std::collections::HashMap<String, Option<Arc<Holdings>>>>,
}

impl Known {
    fn manifest(&self, cache: &Path, digest: &[u8]) -> Option<Arc<slipway_common::archive::Manifest>> {
        let mut known = self.manifests.lock().expect("manifest memo");
        known
            .entry(digest.to_vec())
            .or_insert_with(|| crate::source::manifests::load(cache, digest).map(Arc::new))
            .clone()
    }

    fn holdings(&self, cache: &Path, inventory: &pb::InventoryReply) -> Option<Arc<Holdings>> {
        let mut key = inventory.releases.join(",");
        for r in &inventory.retained {
            key.push_str(&format!(";{}={}:{}", r.id, hex::encode(&r.manifest_sha256), r.changed.join(",")));
        }
        if let Some(found) = self.holdings.lock().expect("holdings memo").get(&key) {
            return found.clone();
        }
        let worked_out = holdings(cache, inventory, self).map(Arc::new);
        self.holdings.lock().expect("holdings memo").insert(key, worked_out.clone());
        worked_out
    }
}

/// Work out what a host holds from its inventory: from the manifests of its retained releases
/// (kept here by digest) less the files it reports changed. A release whose manifest is not
/// known here only counts for nothing (the host may be sent a file it has); `None` when it holds
/// releases and none of them is known (then the host is asked for a digest per file).
fn holdings(cache: &Path, inventory: &pb::InventoryReply, known: &Known) -> Option<Holdings> {
    let mut held = std::collections::HashSet::new();
    let mut base = None;
    for r in &inventory.retained {
        let Some(manifest) = known.manifest(cache, &r.manifest_sha256) else { continue };
        let changed: std::collections::HashSet<&str> = r.changed.iter().map(String::as_str).collect();
        for e in manifest.entries.iter().filter(|e| e.kind == slipway_common::archive::EntryKind::File) {
            if !changed.contains(e.path.as_str()) {
                held.insert(e.sha256.clone());
            }
        }
        if base.is_none()
            && let Ok(id) = ReleaseId::parse(&r.id)
        {
            base = Some((id, r.manifest_sha256.clone(), manifest));
        }
    }
    if base.is_none() && !inventory.releases.is_empty() {
        return None;
    }
    Some(Holdings { held, base })
}

/// What a deploy ships. With a build step (or a cached package) the full artifact exists up
/// front. Without one, nothing is packaged before the hosts say what they hold: when none holds
/// anything the full artifact is packaged once and sent; otherwise the manifest is read from git
/// (blob digests cached), each host group gets a delta packed straight from git, and a host that
/// needs everything gets the full artifact streamed while it is packaged.
pub struct Package {
    /// Read from git before any packaging; once the full artifact exists, its manifest serves.
    pub(crate) manifest: Option<slipway_common::archive::Manifest>,
    pub full: Option<Artifact>,
    /// Without a build step: package (deltas, or the full artifact) straight from git.
    pub(crate) git: Option<(PathBuf, PathBuf, Recipe)>,
    pub(crate) streamed: Option<(Arc<std::fs::File>, watch::Receiver<artifact::PackProgress>)>,
    pub(crate) packing: Option<tokio::task::JoinHandle<Result<Artifact>>>,
    /// The full artifact is packaged before anything is sent (it goes to a store first).
    pub(crate) no_streaming: bool,
}

impl Package {
    pub(crate) fn packaged(full: Artifact) -> Self {
        Package { manifest: None, full: Some(full), git: None, streamed: None, packing: None, no_streaming: false }
    }

    pub(crate) fn from_git(cache: PathBuf, mirror: PathBuf, recipe: Recipe) -> Self {
        Package {
            manifest: None,
            full: None,
            git: Some((cache, mirror, recipe)),
            streamed: None,
            packing: None,
            no_streaming: false,
        }
    }

    /// The manifest; known once [`Package::pack`] or [`Package::read_manifest`] ran.
    pub(crate) fn manifest(&self) -> &slipway_common::archive::Manifest {
        self.known_manifest().expect("the manifest is read before anything is sent")
    }

    pub(crate) fn known_manifest(&self) -> Option<&slipway_common::archive::Manifest> {
        self.full.as_ref().map(|a| &a.manifest).or(self.manifest.as_ref())
    }

    /// The digest of the build this package ships (hex), once its manifest is known.
    pub(crate) fn build_sha256(&self) -> Option<String> {
        match &self.full {
            Some(a) => Some(a.build_sha256()),
            None => self.manifest.as_ref().map(|m| hex::encode(m.digest())),
        }
    }

    /// Package the full artifact now (from git), unless it exists.
    pub(crate) async fn pack(&mut self, reporter: &Emitter) -> Result<()> {
        if self.full.is_some() {
            return Ok(());
        }
        let (cache, mirror, recipe) = self.git.as_ref().expect("a package without artifact packs from git");
        let artifact = artifact::pack_git(cache, mirror, recipe).await?;
        if self.manifest.as_ref().is_some_and(|m| *m != artifact.manifest) {
            return Err(CtlError::failed("the packaged tree differs from its manifest (did the mirror change?)"));
        }
        say_packaged(&artifact, reporter);
        self.manifest = None;
        self.full = Some(artifact);
        Ok(())
    }

    /// Start reading the manifest from git when it is unknown and this project's blob digests are
    /// cached (it was packaged here before).
    pub(crate) fn manifest_in_background(
        &self,
    ) -> Option<tokio::task::JoinHandle<Result<slipway_common::archive::Manifest>>> {
        let (_, mirror, recipe) = self.git.as_ref().filter(|_| self.known_manifest().is_none())?;
        if !artifact::BlobDigests::exist(mirror) {
            return None;
        }
        let (mirror, recipe) = (mirror.clone(), recipe.clone());
        Some(tokio::spawn(async move { artifact::manifest_git(&mirror, &recipe).await }))
    }

    /// Read the manifest from git without packaging (or take the one `early` read), unless known.
    pub(crate) async fn read_manifest(
        &mut self,
        early: Option<tokio::task::JoinHandle<Result<slipway_common::archive::Manifest>>>,
        reporter: &Emitter,
    ) -> Result<()> {
        if self.known_manifest().is_some() {
            return Ok(());
        }
        let (_, mirror, recipe) = self.git.as_ref().expect("a package without manifest reads it from git");
        let t = Instant::now();
        let manifest = match early {
            Some(task) => task.await.map_err(|e| CtlError::failed(format!("manifest task failed: {e}")))??,
            None => artifact::manifest_git(mirror, recipe).await?,
        };
        reporter.say(format!(
            "manifest: {} entries, {} (read from git; waited {} for it)",
            manifest.entries.len(),
            bytes(manifest.file_bytes()),
            millis(t.elapsed().as_millis() as u64)
        ));
        self.manifest = Some(manifest);
        Ok(())
    }

    /// The full artifact for a host: the file when there is one, else the stream (started now),
    /// or the file packaged now when streaming is off.
    pub(crate) async fn full_upload(&mut self, reporter: &Emitter) -> Result<Upload> {
        if self.no_streaming && self.streamed.is_none() {
            self.pack(reporter).await?;
        }
        if let Some(a) = &self.full {
            return Ok(Upload::File {
                base: None,
                path: a.path.clone(),
                sha256: a.sha256.clone(),
                size: a.compressed_bytes,
                delta: false,
            });
        }
        if self.streamed.is_none() {
            let (cache, mirror, recipe) = self.git.as_ref().expect("a package without artifact packs from git");
            let pack = artifact::stream_git(cache, mirror, recipe, self.manifest().clone())?;
            reporter.say("packaging the full artifact while sending it");
            self.streamed = Some((pack.file, pack.progress));
            self.packing = Some(pack.task);
        }
        let (file, progress) = self.streamed.clone().expect("just set");
        Ok(Upload::Streamed { file, progress })
    }

    /// A delta shipping only `ship`.
    pub(crate) async fn delta(&self, ship: std::collections::BTreeSet<String>) -> Result<crate::source::delta::Delta> {
        match (&self.full, &self.git) {
            (Some(full), _) => crate::source::delta::delta(full, ship).await,
            (None, Some((cache, mirror, recipe))) => crate::source::delta::delta_git(cache, mirror, recipe, ship).await,
            (None, None) => Err(CtlError::failed("no package to derive a delta from")),
        }
    }

    /// Wait for a streamed packaging to end; then the full artifact is known (and cached).
    pub(crate) async fn finish(&mut self) -> Option<Result<()>> {
        let task = self.packing.take()?;
        Some(match task.await {
            Ok(Ok(artifact)) => {
                self.full = Some(artifact);
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(e) => Err(CtlError::failed(format!("packaging task failed: {e}"))),
        })
    }
}

/// Ask each host what its retained releases hold and derive what it must be sent. Hosts with the
/// same gaps share one delta package; a host that holds nothing useful gets the full artifact.
/// The connections made here are returned so the uploads reuse them.
pub(crate) async fn plan_uploads(
    hosts: &[String],
    agents: &BTreeMap<String, AgentRecord>,
    settings: &EnvSettings,
    package: &mut Package,
    fan: &Fanout,
    reporter: &Emitter,
    cache: &Path,
) -> Result<(BTreeMap<String, Upload>, BTreeMap<String, AgentClient>)> {
    // A project packaged here before (its blob digests are cached) likely has hosts holding most of
    // it: read the manifest while they answer.
    let early = package.manifest_in_background();
    let cache = cache.to_path_buf();
    let known = Arc::new(Known::default());
    let inventories = ask_all(hosts, |host| {
        let (agent, tls, timeouts, target, cache, known) = (
            agents[&host].clone(),
            fan.tls.clone(),
            fan.timeouts,
            pb_target(settings, &host),
            cache.clone(),
            known.clone(),
        );
        async move {
            let connection = client::connect(tls, &agent, timeouts).await.ok();
            let ask = |per_file: bool| {
                let (connection, target) = (connection.clone(), target.clone());
                async move {
                    let mut c = connection?;
                    let call = c.inventory(pb::InventoryRequest { target: Some(target), per_file });
                    tokio::time::timeout(timeouts.call, call).await.ok().and_then(Result::ok).map(|r| r.into_inner())
                }
            };
            // A manifest digest per retained release; a digest per file only when a retained
            // release's manifest is not known here.
            let mut inventory = ask(false).await;
            let mut holdings = inventory.as_ref().and_then(|i| known.holdings(&cache, i));
            if inventory.is_some() && holdings.is_none() {
                inventory = ask(true).await;
                holdings = inventory.as_ref().map(|i| {
                    Arc::new(Holdings {
                        held: i.digests.iter().map(|d| slipway_proto::bytes_to_hex(d)).collect(),
                        base: None,
                    })
                });
            }
            (connection, holdings)
        }
    })
    .await;
    let inventories: Vec<_> = inventories.into_iter().map(|(host, (c, h))| (host, c, h)).collect();
    if inventories.iter().all(|(_, _, h)| h.as_ref().is_none_or(|h| h.held.is_empty())) {
        // Nobody holds anything: package once, send it whole (no manifest pass of its own).
        if let Some(task) = early {
            task.abort();
        }
        package.pack(reporter).await?;
    } else {
        package.read_manifest(early, reporter).await?;
    }
    let new_manifest = package.manifest();
    let files: Vec<(&str, &str)> = new_manifest
        .entries
        .iter()
        .filter(|e| e.kind == slipway_common::archive::EntryKind::File)
        .map(|e| (e.sha256.as_str(), e.path.as_str()))
        .collect();
    let mut groups: BTreeMap<std::collections::BTreeSet<String>, Vec<String>> = BTreeMap::new();
    let mut full_hosts = Vec::new();
    let mut connections = BTreeMap::new();
    // One diff per base manifest, shared by the hosts that hold it.
    let mut diffs: std::collections::HashMap<Vec<u8>, Arc<Base>> = std::collections::HashMap::new();
    let mut bases: BTreeMap<String, Arc<Base>> = BTreeMap::new();
    // What to ship, once per distinct `Holdings` (hosts with the same inventory share one; the
    // `Arc` is kept beside it so its address stays its own).
    type Ship = (Arc<Holdings>, std::collections::BTreeSet<String>);
    let mut ships: std::collections::HashMap<usize, Ship> = Default::default();
    for (host, connection, holdings) in inventories {
        if let Some(c) = connection {
            connections.insert(host.clone(), c);
        }
        let holdings = holdings.unwrap_or_else(|| Arc::new(Holdings { held: Default::default(), base: None }));
        let ship = ships
            .entry(Arc::as_ptr(&holdings) as usize)
            .or_insert_with(|| {
                let ship = files
                    .iter()
                    .filter(|(digest, _)| !holdings.held.contains(*digest))
                    .map(|(_, path)| (*path).to_owned())
                    .collect();
                (holdings.clone(), ship)
            })
            .1
            .clone();
        if ship.len() == files.len() {
            full_hosts.push(host);
            continue;
        }
        if let Some((release, digest, manifest)) = holdings.base.clone() {
            let base = diffs
                .entry(digest.clone())
                .or_insert_with(|| {
                    let diff = new_manifest.diff_from(&manifest);
                    Arc::new(Base { release: release.clone(), manifest_sha256: digest, diff: (&diff).into() })
                })
                .clone();
            // The same manifest under another release id on this host: name its own release.
            let base = if base.release == release {
                base
            } else {
                Arc::new(Base { release, manifest_sha256: base.manifest_sha256.clone(), diff: base.diff.clone() })
            };
            bases.insert(host.clone(), base);
        }
        groups.entry(ship).or_default().push(host);
    }
    let mut uploads = BTreeMap::new();
    for (ship, group) in groups {
        let shipped = ship.len();
        match package.delta(ship).await {
            Ok(d) => {
                reporter.say(format!(
                    "delta for {}: {shipped} of {} files changed, {} to send",
                    group.join(", "),
                    files.len(),
                    bytes(d.compressed_bytes)
                ));
                for host in group {
                    let upload = Upload::File {
                        path: d.path.clone(),
                        sha256: d.sha256.clone(),
                        size: d.compressed_bytes,
                        delta: true,
                        base: bases.get(&host).cloned(),
                    };
                    uploads.insert(host, upload);
                }
            }
            Err(e) => {
                reporter.say(format!("cannot build a delta ({e}); sending the full artifact"));
                full_hosts.extend(group);
            }
        }
    }
    for host in full_hosts {
        uploads.insert(host, package.full_upload(reporter).await?);
    }
    Ok((uploads, connections))
}

pub(crate) fn say_packaged(artifact: &Artifact, reporter: &Emitter) {
    reporter.say(format!(
        "{} {} entries, {} -> {} tar.zst (sha256 {}){}",
        if artifact.cached { "reusing package:" } else { "packaged" },
        artifact.entries,
        bytes(artifact.file_bytes),
        bytes(artifact.compressed_bytes),
        &artifact.sha256[..12],
        if artifact.cached { String::new() } else { format!(" in {}", millis(artifact.package_ms)) }
    ));
}

pub(crate) fn artifact_summary(artifact: &Artifact) -> ArtifactSummary {
    ArtifactSummary {
        sha256: artifact.sha256.clone(),
        compressed_bytes: artifact.compressed_bytes,
        file_bytes: artifact.file_bytes,
        entries: artifact.entries,
        cached: artifact.cached,
        package_ms: artifact.package_ms,
    }
}

/// The env layer's overlay: the `config_dir` directory and its digest.
pub(crate) fn overlay(scope: &Scope) -> Result<Option<(PathBuf, String)>> {
    let settings = &scope.settings;
    let Some(dir) = &settings.config_dir else { return Ok(None) };
    let path = scope.project.source_dir.join(dir);
    if !path.is_dir() {
        return Err(CtlError::bad(format!(
            "config_dir '{dir}' of env '{}' is not a directory on the controller (looked in {})",
            settings.env,
            path.display(),
        ))
        .fix(format!("create it or fix config_dir in {}", scope.project.source_file.display())));
    }
    let digest = build::overlay_digest(&path)?;
    Ok(Some((path, digest)))
}

/// The recipe of this deploy's package: commit, excludes, build hooks, overlay.
pub(crate) fn recipe(scope: &Scope, resolved: &git::Resolved) -> Result<Recipe> {
    let settings = &scope.settings;
    let overlay = overlay(scope)?;
    crate::source::exclude::Excludes::new(&settings.exclude)?;
    Ok(Recipe {
        commit: resolved.commit.clone(),
        commit_time: resolved.commit_time,
        excludes: settings.exclude.clone(),
        pre_deploy: settings.build.pre_deploy.clone(),
        post_deploy: settings.build.post_deploy.clone(),
        build_timeout_secs: settings.build.timeout_secs,
        overlay,
        base: None,
        svn: (settings.repo_type == slipway_common::config::RepoType::Svn)
            .then(|| crate::engine::scope::repo_url(&scope.project, settings)),
    })
}

/// The package for this deploy: cached, streamed from git, or built in a fresh checkout; with the
/// env's overlay, the build (made or found) with the layer on top.
pub(crate) async fn package(
    home: &Home,
    mirror: &Path,
    recipe: &Recipe,
    record: &mut DeployRecord,
    settings: &EnvSettings,
    reporter: &Emitter,
    dry_run: bool,
) -> Result<Package> {
    let cache = home.cache();
    if let Some(found) = artifact::lookup(&cache, recipe) {
        return Ok(Package::packaged(found));
    }
    let build_recipe = recipe.build_only();
    let build = match artifact::lookup(&cache, &build_recipe) {
        Some(found) => found,
        None if !build_recipe.needs_checkout() => {
            if recipe.overlay.is_none() && !dry_run {
                return Ok(Package::from_git(cache, mirror.to_path_buf(), recipe.clone()));
            }
            artifact::pack_git(&cache, mirror, &build_recipe).await?
        }
        None => build_in_checkout(home, mirror, &build_recipe, record, settings, reporter).await?,
    };
    layer(home, build, recipe, reporter).await
}

/// `build` with the env layer of `recipe` on top (the build itself when the env has none).
pub(crate) async fn layer(home: &Home, build: Artifact, recipe: &Recipe, reporter: &Emitter) -> Result<Package> {
    let Some((dir, digest)) = &recipe.overlay else { return Ok(Package::packaged(build)) };
    if let Some(found) = artifact::lookup(&home.cache(), recipe) {
        return Ok(Package::packaged(found));
    }
    let layered = artifact::pack_layered(&home.cache(), &build, recipe).await?;
    reporter.say(format!(
        "env layer {} (sha256 {}) put on build {}",
        dir.display(),
        &digest[..12],
        &build.manifest_sha256()[..12]
    ));
    Ok(Package::packaged(layered))
}

/// Check the commit out, run the build hooks, package what they leave. The build sees nothing
/// of the env (no `SLIPWAY_ENV`, no `vars`): it is made once for every env.
async fn build_in_checkout(
    home: &Home,
    mirror: &Path,
    recipe: &Recipe,
    record: &mut DeployRecord,
    settings: &EnvSettings,
    reporter: &Emitter,
) -> Result<Artifact> {
    let work = home.cache().join("work").join(format!(
        "{}-{}-{}",
        settings.project,
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
    ));
    let cache = crate::source::build_cache::BuildCache::of(&home.cache(), &settings.project, &settings.build.cache);
    // `~/` cache paths live in a home of this build's own (beside the checkout, not in it).
    let build_home = cache.as_ref().filter(|c| c.wants_home()).map(|_| work.with_extension("home"));
    let mut env = std::collections::BTreeMap::new();
    if let Some(h) = &build_home {
        std::fs::create_dir_all(h).context(format_args!("cannot create {}", h.display()))?;
        env.insert("HOME".to_owned(), h.display().to_string());
    }
    for (k, v) in [
        ("PROJECT", settings.project.clone()),
        ("DEPLOY_ID", record.id.to_string()),
        ("COMMIT", record.commit.clone()),
        ("REF", record.git_ref.clone()),
        ("DEPLOY_TYPE", "deploy".to_owned()),
        ("BUILD_DIR", work.display().to_string()),
    ] {
        env.insert(format!("SLIPWAY_{k}"), v);
    }
    let cached = cache.as_ref().map(|c| (c, build_home.as_deref()));
    let built = build::build(mirror, recipe, &work, &env, cached, reporter).await;
    let result = match built {
        Ok(hooks) => {
            record.build = hooks;
            let packed = artifact::pack_dir(&home.cache(), &work, recipe).await;
            // What a build that went through leaves is the next one's start.
            if let (Ok(_), Some(c)) = (&packed, &cache) {
                match c.keep(&work, build_home.as_deref()) {
                    Ok(kept) if !kept.paths.is_empty() => {
                        reporter.say(format!("build cache: {} kept in {} ms", kept.paths.join(", "), kept.ms))
                    }
                    Ok(_) => {}
                    Err(e) => reporter.say(format!("build cache not kept: {e}")),
                }
            }
            packed
        }
        Err(failure) => {
            record.build = failure.hooks;
            Err(failure.error)
        }
    };
    let _ = std::fs::remove_dir_all(&work);
    if let Some(h) = &build_home {
        let _ = std::fs::remove_dir_all(h);
    }
    result
}
