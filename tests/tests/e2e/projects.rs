//! Project files as revisions (issue #21): every save — `slipctl project apply`, `PUT
//! /api/v1/projects/{p}`, a revert — is a numbered revision with who and when; a maintainer of
//! the project (or an admin) may change it, a deployer may not; a save based on an older
//! revision is refused naming who changed it; a bad value is refused naming the key, nothing
//! saved; secrets are shown masked and kept; every deploy names the revision it ran with.

use serde_json::{Value, json};
use slipway_tests::{Fleet, Repo, Server, add_admin, add_user};

fn text(fleet: &Fleet, repo: &Repo, hook: &str, extra: &str) -> String {
    let root = fleet.path().join("hosts");
    format!(
        "name = \"a\"\nrepo = \"{}\"\n{extra}\n[target]\ndeploy_to = \"{root}/{{host}}/a\"\ncurrent = \"{root}/{{host}}/www/a\"\n\
         pre_release = [\"echo {hook}\"]\n{}\n[env.test]\nhosts = [\"role=web\"]\n",
        repo.path.display(),
        slipway_tests::hook_user_line(),
        root = root.display()
    )
}

fn put(server: &Server, who: &(String, String), body: &str, if_match: Option<&str>) -> (u16, Value) {
    let mut headers =
        vec![("Cookie", who.0.as_str()), ("X-CSRF-Token", who.1.as_str()), ("Content-Type", "application/toml")];
    if let Some(m) = if_match {
        headers.push(("If-Match", m));
    }
    server.call("PUT", "/api/v1/projects/a", &headers, Some(body))
}

fn get(server: &Server, who: &(String, String), path: &str) -> Value {
    server.call("GET", path, &[("Cookie", who.0.as_str())], None).1
}

/// The hook lines a deploy ran, from `show --output json`.
fn hook_output(fleet: &Fleet, id: u64) -> String {
    fleet.slipctl(&["--output", "json", "show", &id.to_string()]).ok().json()["hosts"][0]["hooks"][0]["output_head"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

#[test]
fn project_files_are_revisions_that_maintainers_edit_and_deploys_name() {
    let fleet = Fleet::new(1);
    let repo = Repo::new(fleet.path().join("repo"));
    repo.write("index.html", "v1\n");
    repo.commit("v1");
    let file = fleet.path().join("a.toml");
    std::fs::write(&file, text(&fleet, &repo, "hook one", "")).unwrap();
    let applied = fleet.slipctl(&["--output", "json", "project", "apply", "-f", file.to_str().unwrap()]).ok().json();
    assert_eq!(applied["revision"], 1, "{applied}");
    add_user(&fleet, "maint", &[]);
    fleet.slipctl(&["user", "grant", "maint", "a", "*", "maintainer"]).ok();
    add_user(&fleet, "dev", &[("a", "test", "deployer")]);
    add_admin(&fleet, "boss");
    let server = Server::start(&fleet);
    let (maint, dev, boss) = (
        server.login("maint", "maint-password"),
        server.login("dev", "dev-password"),
        server.login("boss", "boss-password"),
    );

    // The maintainer reads the file and its revision; a deployer gets neither and cannot save.
    let doc = get(&server, &maint, "/api/v1/projects/a");
    assert_eq!(doc["revision"], 1);
    assert!(doc["text"].as_str().unwrap().contains("hook one"), "{doc}");
    assert!(get(&server, &dev, "/api/v1/projects/a").get("text").is_none(), "a deployer sees no file");
    let two = text(&fleet, &repo, "hook two", "");
    assert_eq!(put(&server, &dev, &two, Some("\"r1\"")).0, 403, "a deployer changed the hooks");
    assert_eq!(put(&server, &maint, &two, None).0, 428, "a save must say which revision it was made on");

    // A bad value: refused naming the key, nothing saved.
    let bad = text(&fleet, &repo, "hook two", "keep_releases = \"many\"");
    let (status, doc) = put(&server, &maint, &bad, Some("\"r1\""));
    assert_eq!(status, 400, "{doc}");
    assert!(doc["error"].as_str().unwrap().contains("keep_releases"), "{doc}");
    assert_eq!(get(&server, &maint, "/api/v1/projects/a")["revision"], 1, "nothing saved");

    // Saved as revision 2; a second editor working from revision 1 is refused, naming the first.
    let (status, doc) = put(&server, &maint, &two, Some("\"r1\""));
    assert_eq!((status, doc["revision"].as_u64()), (200, Some(2)), "{doc}");
    let (status, doc) = put(&server, &boss, &text(&fleet, &repo, "hook three", ""), Some("\"r1\""));
    assert_eq!(status, 409, "{doc}");
    assert!(doc["error"].as_str().unwrap().contains("changed by maint"), "{doc}");

    // A notification secret is shown masked, and a save that keeps the mask keeps it.
    let with_secret = text(
        &fleet,
        &repo,
        "hook two",
        "[[notify]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/n\"\nsecret = \"sink-s3cret\"",
    );
    assert_eq!(put(&server, &maint, &with_secret, Some("\"r2\"")).0, 200);
    let shown = get(&server, &maint, "/api/v1/projects/a")["text"].as_str().unwrap().to_owned();
    assert!(!shown.contains("sink-s3cret") && shown.contains("********"), "{shown}");
    let (status, doc) = put(&server, &maint, &shown, Some("\"r3\""));
    assert_eq!(status, 200, "{doc}");
    let diff = fleet.slipctl(&["project", "diff", "a", "3", "4"]).ok().stdout;
    assert!(diff.contains("the same"), "the secret was kept: {diff}");
    let revision_4 = get(&server, &maint, "/api/v1/projects/a/revisions/4");
    assert!(!revision_4["text"].as_str().unwrap().contains("sink-s3cret"), "{revision_4}");

    // History and diff; a deploy runs revision 4's hooks and names it.
    let history = fleet.slipctl(&["--output", "json", "project", "history", "a"]).ok().json();
    let by: Vec<&str> = history.as_array().unwrap().iter().map(|r| r["by"].as_str().unwrap()).collect();
    assert_eq!(by.len(), 4, "{history}");
    assert_eq!(&by[1..], ["maint", "maint", "maint"], "{history}");
    let diff = fleet.slipctl(&["project", "diff", "a", "1", "2"]).ok().stdout;
    assert!(
        diff.contains("-pre_release = [\"echo hook one\"]") && diff.contains("+pre_release = [\"echo hook two\"]"),
        "{diff}"
    );
    let id = fleet.slipctl(&["--output", "json", "deploy", "a", "test"]).ok().json()["id"].as_u64().unwrap();
    assert!(hook_output(&fleet, id).contains("hook two"));
    let shown = fleet.slipctl(&["show", &id.to_string()]).ok().stdout;
    assert!(shown.contains("project revision 4"), "{shown}");

    // Revert to revision 1: a new revision, and the old hooks run on the next deploy.
    let reverted = fleet
        .slipctl_env(&["--output", "json", "project", "revert", "a", "1"], &[("SLIPWAY_USER", "boss")])
        .ok()
        .json();
    assert_eq!(reverted["revision"], 5, "{reverted}");
    let history = fleet.slipctl(&["--output", "json", "project", "history", "a"]).ok().json();
    assert_eq!(
        history[4],
        json!({"revision": 5, "by": "boss", "at": history[4]["at"], "note": "revert to revision 1"})
    );
    let id = fleet.slipctl(&["--output", "json", "deploy", "a", "test"]).ok().json()["id"].as_u64().unwrap();
    assert!(hook_output(&fleet, id).contains("hook one"), "the old hooks ran");
    assert!(fleet.slipctl(&["show", &id.to_string()]).ok().stdout.contains("project revision 5"));
}
