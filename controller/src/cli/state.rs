//! `slipctl state migrate --from sled --to postgres://…`: every tree of the home's sled
//! database copied into an empty PostgreSQL database, entry by entry, then counted on both
//! sides; the sled files are left as they were.

use serde_json::json;

use crate::cli::args_team::StateCommand;
use crate::cli::output::table;
use crate::cli::{Cx, print};
use crate::error::{CtlError, Result};
use crate::state::home::Home;
use crate::state::postgres::shown;
use crate::state::store::Store;

pub(crate) fn state_command(home: &Home, out: &Cx, cmd: StateCommand) -> Result<u8> {
    let StateCommand::Migrate { from: _, to } = cmd;
    if home.root.join("slipctl.sock").exists()
        && std::os::unix::net::UnixStream::connect(home.root.join("slipctl.sock")).is_ok()
    {
        return Err(CtlError::busy("a server runs for this home: its state would change while it is copied")
            .fix("stop it (systemctl stop slipctl), migrate, set [state] url, start it again"));
    }
    let source = Store::open_sled(&home.state())?;
    // (A CA for TLS to the database, if the home's config names one.)
    let ca_file = crate::state::home::HomeConfig::load(&home.root)?.state.ca_file;
    let target = Store::open_postgres(&crate::state::home::Database { url: to.clone(), ca_file })?;
    let held = target.backend().tree_names()?;
    if !held.is_empty() {
        return Err(CtlError::bad(format!(
            "the database at {} already holds Slipway state ({})",
            shown(&to),
            held.join(", ")
        ))
        .fix("migrate into an empty database (createdb a new one)"));
    }
    let mut rows = Vec::new();
    let mut counts = serde_json::Map::new();
    for tree in source.backend().tree_names()? {
        let entries = source.backend().scan(&tree, b"", false)?;
        for (key, value) in &entries {
            target.backend().put(&tree, key, value)?;
        }
        let copied = target.backend().scan(&tree, b"", false)?;
        if copied != entries {
            return Err(CtlError::failed(format!(
                "tree {tree}: {} entries in sled, {} read back from PostgreSQL",
                entries.len(),
                copied.len()
            ))
            .fix("the copy is not usable: drop the database, check it, and migrate again"));
        }
        counts.insert(tree.clone(), json!(entries.len()));
        rows.push(vec![tree, entries.len().to_string(), copied.len().to_string()]);
    }
    let line = format!("[state]\nurl = \"{}\"", to.replace('"', "\\\""));
    print(out, json!({"to": shown(&to), "trees": counts}), || {
        format!(
            "{}copied into {}; to use it, put this in {} (no slipctl running):\n{line}",
            table(&["TREE", "SLED", "POSTGRESQL"], &rows),
            shown(&to),
            home.root.join("config.toml").display()
        )
    });
    Ok(0)
}
