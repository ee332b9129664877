//! Architecture Invariant (ARCHITECTURE.md): the core — `engine`, `state`, `source`, `ops` —
//! never names a front end (`cli`, `server`, `web`), and the front ends reach each other only
//! where [`ALLOWED`] says. That list only shrinks: a new edge fails the test, and so does an
//! edge that is gone but still listed (take it off). Edges are found in the source text
//! (`crate::cli`, `crate::server`, `crate::web`).

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    const CORE: [&str; 4] = ["engine", "state", "source", "ops"];
    const FRONT_ENDS: [&str; 3] = ["cli", "server", "web"];

    /// Front end → front end edges, by file. What is left is the shape, not debt: the CLI starts
    /// the server (`serve`, `quickstart --serve`) and is its client (`remote.rs`: the wire
    /// types); the server carries out a `slipctl` command for a `slipctl` elsewhere
    /// (`exec.rs`, handing it an explicit `cli::Cx`) and takes `serve`'s arguments; the pages are
    /// mounted in the server and stand on its transport (its state, authentication, errors,
    /// event streams, stop signal), and the server mounts them and lets them present its
    /// refusals. Every operation goes through `ops`.
    const ALLOWED: [(&str, &str); 14] = [
        ("cli/mod.rs", "server"),
        ("cli/quickstart.rs", "server"),
        ("cli/remote.rs", "server"),
        ("server/api.rs", "web"),
        ("server/exec.rs", "cli"),
        ("server/mod.rs", "cli"),
        ("web/dashboard.rs", "server"),
        ("web/form.rs", "server"),
        ("web/lists.rs", "server"),
        ("web/live.rs", "server"),
        ("web/mod.rs", "server"),
        ("web/panes.rs", "server"),
        ("web/project.rs", "server"),
        ("web/ticket.rs", "server"),
    ];

    fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn the_core_names_no_front_end_and_front_ends_meet_only_where_allowed() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut found = BTreeSet::new();
        let mut wrong = Vec::new();
        for module in CORE.iter().chain(FRONT_ENDS.iter()) {
            let mut paths = Vec::new();
            files(&src.join(module), &mut paths);
            for path in paths {
                let text = std::fs::read_to_string(&path).unwrap();
                let file = path.strip_prefix(&src).unwrap().display().to_string();
                for target in FRONT_ENDS.iter().filter(|t| *t != module) {
                    let named =
                        [":", ";", "}", ",", " "].iter().any(|end| text.contains(&format!("crate::{target}{end}")));
                    if !named {
                        continue;
                    }
                    if CORE.contains(module) {
                        wrong.push(format!("{file} (core) names crate::{target}"));
                    } else if ALLOWED.contains(&(file.as_str(), *target)) {
                        found.insert((file.clone(), target.to_string()));
                    } else {
                        wrong.push(format!("{file} names crate::{target}: go through ops instead"));
                    }
                }
            }
        }
        for (file, target) in ALLOWED {
            if !found.contains(&(file.to_owned(), target.to_owned())) {
                wrong.push(format!("{file} no longer names crate::{target}: take it off ALLOWED"));
            }
        }
        assert!(wrong.is_empty(), "layering:\n{}", wrong.join("\n"));
    }
}
