//! `slipctl artifact push|list`: builds made by CI, kept by name (`ops::artifacts`), shipped by
//! `deploy --artifact NAME`; and `slipctl cache clear`, the paths a project's builds keep.

use clap::Subcommand;
use serde_json::json;
use slipway_common::time::format_utc;

use crate::cli::output::table;
use crate::cli::{Cx, print};
use crate::error::Result;
use crate::ops::artifacts;
use crate::state::artifacts::PushedArtifact;
use crate::state::home::Home;
use crate::units::bytes;

#[derive(Subcommand)]
pub enum ArtifactCommand {
    /// Keep a build made elsewhere: a file (a WAR, a JAR: the release holds that one file), a
    /// tar archive (.tar, .tar.gz, .tar.zst: unpacked by the agents' rules) or a directory
    #[command(after_help = "Examples:\n  \
        slipctl artifact push shop target/shop.war --name 1.4.2 --commit 3f2a91c\n  \
        slipctl artifact push site dist.tar.gz --name build-812\n\n\
        A name is taken once: artifacts never change. Ship one with\n  \
        slipctl deploy shop test --artifact 1.4.2")]
    Push {
        /// The project, as `slipctl project list` names it
        project: String,
        /// The file, archive or directory CI built
        path: std::path::PathBuf,
        /// Its name, a version or build number (immutable)
        #[arg(long)]
        name: String,
        /// The commit CI built it from (recorded with it; names its releases)
        #[arg(long, default_value = "")]
        commit: String,
        /// The sha256 the bytes must have (checked before anything is kept)
        #[arg(long)]
        sha256: Option<String>,
    },
    /// A project's artifacts, newest first
    #[command(after_help = "Example:\n  slipctl artifact list shop")]
    List {
        /// The project
        project: String,
    },
}

#[derive(Subcommand)]
pub enum CacheCommand {
    /// Drop what a project's builds keep between them ([build] cache): the next build starts cold
    #[command(after_help = "Example:\n  slipctl cache clear shop")]
    Clear {
        /// The project
        project: String,
    },
}

pub(crate) fn cache_command(home: &Home, out: &Cx, cmd: CacheCommand) -> Result<u8> {
    let CacheCommand::Clear { project } = cmd;
    let store = out.store(home)?;
    crate::engine::scope::project_of(&store, &project)?;
    let freed = crate::source::build_cache::clear(&home.cache(), &project)?;
    print(out, json!({"project": project, "freed_bytes": freed}), || {
        format!("build cache of {project} cleared ({} freed); its next build starts cold", bytes(freed))
    });
    Ok(0)
}

pub(crate) fn text(a: &PushedArtifact) -> String {
    format!(
        "artifact {} of {}: {} {} ({} entries, {} -> {} tar.zst)\n  build sha256 {}\n  commit {}\n  pushed by {} at {}\n",
        a.name,
        a.project,
        a.kind,
        a.source,
        a.entries,
        bytes(a.file_bytes),
        bytes(a.compressed_bytes),
        a.sha256,
        if a.commit.is_empty() { "-" } else { &a.commit },
        a.pushed_by,
        format_utc(a.pushed_at)
    )
}

/// What `artifact push` sends a server: a file's bytes as they are, a directory packed here
/// (tar + zstd), and the name a single file has in the release.
pub(crate) fn bytes_to_push(path: &std::path::Path) -> Result<(Vec<u8>, String)> {
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if !path.is_dir() {
        let bytes = std::fs::read(path)
            .map_err(|e| crate::error::CtlError::bad(format!("cannot read {}: {e}", path.display())))?;
        return Ok((bytes, file_name));
    }
    let mut packer = slipway_common::archive::Packer::new(Vec::new(), 3, 2, slipway_common::time::unix_now() as u64)
        .map_err(|e| crate::error::CtlError::failed(format!("cannot pack {}: {e}", path.display())))?;
    crate::source::tree::walk_dir(path, &crate::source::exclude::Excludes::default(), &mut packer)?;
    let packed =
        packer.finish().map_err(|e| crate::error::CtlError::failed(format!("cannot pack {}: {e}", path.display())))?;
    Ok((packed.out, file_name))
}

pub(crate) async fn artifact_command(home: &Home, out: &Cx, cmd: ArtifactCommand) -> Result<u8> {
    let store = &out.store(home)?;
    match cmd {
        ArtifactCommand::Push { project, path, name, commit, sha256 } => {
            let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let by = out.served_caller().unwrap_or_else(crate::engine::scope::current_user);
            let push = artifacts::Push { project, name, commit, file_name, sha256, by };
            let kept = artifacts::push(home, store, push, &path).await?;
            print(out, json!(kept), || text(&kept));
        }
        ArtifactCommand::List { project } => {
            let list = artifacts::list(store, &project)?;
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|a| {
                    vec![
                        a.name.clone(),
                        a.kind.clone(),
                        a.sha256[..12].to_owned(),
                        a.commit.get(..7).unwrap_or("-").to_owned(),
                        bytes(a.file_bytes),
                        a.pushed_by.clone(),
                        format_utc(a.pushed_at),
                    ]
                })
                .collect();
            print(out, json!(list), || table(&["NAME", "KIND", "BUILD", "COMMIT", "SIZE", "BY", "PUSHED"], &rows));
        }
    }
    Ok(0)
}
