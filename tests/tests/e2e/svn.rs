//! svn as a source (issue #24 item 4), against a real `svnserve` (Debian's `subversion`):
//! trunk, a branch, a tag and an old revision shipped; the ref picker's revisions with author
//! and message; a revision that does not exist and a server that does not answer refused
//! before anything is sent.

use std::path::Path;
use std::process::{Command, Stdio};

use slipway_tests::{Fleet, Proc, free_port, require, wait_for};

fn svn(args: &[&str], cwd: Option<&Path>) -> String {
    let mut cmd = Command::new("svn");
    cmd.args(["--non-interactive"]).args(args).env("LC_ALL", "C");
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let out = cmd.output().expect("svn");
    assert!(out.status.success(), "svn {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A repository (r1 its layout) with trunk changed in r2 and r4, a branch (r3) and a tag (r5), by `alice` and
/// `bob`; `svnserve` serving it read-only to anyone on a loopback port.
fn repository(root: &Path) -> (Proc, String) {
    let repo = root.join("svnroot/shop");
    std::fs::create_dir_all(repo.parent().unwrap()).unwrap();
    let status = Command::new("svnadmin").args(["create", repo.to_str().unwrap()]).status().unwrap();
    assert!(status.success());
    std::fs::write(repo.join("conf/svnserve.conf"), "[general]\nanon-access = read\nauth-access = read\n").unwrap();
    let file_url = format!("file://{}", repo.display());
    let wc = root.join("wc");
    svn(
        &[
            "mkdir",
            "-q",
            "-m",
            "layout",
            &format!("{file_url}/trunk"),
            &format!("{file_url}/branches"),
            &format!("{file_url}/tags"),
        ],
        None,
    );
    svn(&["checkout", "-q", &format!("{file_url}/trunk"), wc.to_str().unwrap()], None);
    std::fs::write(wc.join("index.html"), "trunk v1\n").unwrap();
    std::fs::create_dir_all(wc.join("WEB-INF")).unwrap();
    std::fs::write(wc.join("WEB-INF/web.xml"), "<web-app/>\n").unwrap();
    svn(&["add", "-q", "index.html", "WEB-INF"], Some(&wc));
    svn(&["commit", "-q", "--username", "alice", "-m", "first page"], Some(&wc)); // r2
    svn(
        &[
            "copy",
            "-q",
            "--username",
            "bob",
            "-m",
            "branch for the sale",
            &format!("{file_url}/trunk"),
            &format!("{file_url}/branches/sale"),
        ],
        None,
    ); // r3
    std::fs::write(wc.join("index.html"), "trunk v2\n").unwrap();
    svn(&["commit", "-q", "--username", "alice", "-m", "second page\nwith a body line"], Some(&wc)); // r4
    svn(
        &[
            "copy",
            "-q",
            "--username",
            "bob",
            "-m",
            "release 1.0",
            &format!("{file_url}/trunk"),
            &format!("{file_url}/tags/1.0"),
        ],
        None,
    ); // r5
    let port = free_port();
    let child = Command::new("svnserve")
        .args(["--foreground", "-d", "--listen-host", "127.0.0.1", "--listen-port", &port.to_string(), "-r"])
        .arg(root.join("svnroot"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start svnserve");
    let proc = Proc(child);
    wait_for("svnserve", || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    (proc, format!("svn://127.0.0.1:{port}/shop"))
}

fn project(fleet: &Fleet, url: &str) {
    let file = fleet.path().join("shop.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"shop\"\nrepo = \"{url}\"\ntype = \"svn\"\n\
             [target]\ndeploy_to = \"{root}/{{host}}/shop\"\ncurrent = \"{root}/{{host}}/www/shop\"\n\
             [env.test]\nhosts = [\"role=web\"]\n",
            root = fleet.path().join("hosts").display(),
        ),
    )
    .unwrap();
    fleet.slipctl(&["project", "apply", "-f", file.to_str().unwrap()]).ok();
}

#[test]
fn svn_trunk_branches_tags_and_revisions_ship_and_bad_refs_stop_before_anything_is_sent() {
    if !require("svnserve (apt-get install subversion)", Command::new("svnserve").arg("--version").output().is_ok()) {
        return;
    }
    let fleet = Fleet::new(2);
    let (_svnserve, url) = repository(&fleet.path().join("svn"));
    project(&fleet, &url);
    let page = || std::fs::read_to_string(fleet.current("web-2", "shop").join("index.html")).unwrap();

    // trunk (the default ref for svn): its last change, r4.
    let first = fleet.slipctl(&["--output", "json", "deploy", "shop", "test"]).ok().json();
    assert_eq!(page(), "trunk v2\n");
    assert_eq!(first["git_ref"], "trunk");
    assert_eq!(first["commit"], "trunk@4");
    assert!(first["release"].as_str().unwrap().ends_with("-0000004"), "{first}");
    assert!(fleet.current("web-1", "shop").join("WEB-INF/web.xml").is_file());
    assert!(!fleet.current("web-1", "shop").join(".svn").exists(), "an export, not a working copy");
    // An old revision of trunk, a branch, a tag.
    fleet.slipctl(&["deploy", "shop", "test", "--ref", "r2"]).ok();
    assert_eq!(page(), "trunk v1\n");
    let branch = fleet.slipctl(&["--output", "json", "deploy", "shop", "test", "--ref", "branches/sale"]).ok().json();
    assert_eq!(page(), "trunk v1\n", "the branch was made from r2's trunk");
    assert_eq!(branch["commit"], "branches/sale@3");
    let tag = fleet.slipctl(&["--output", "json", "deploy", "shop", "test", "--ref", "tags/1.0"]).ok().json();
    assert_eq!(page(), "trunk v2\n");
    assert_eq!(tag["commit"], "tags/1.0@5");
    // The same tree again is the same build: nothing exported or packed again.
    let again = fleet.slipctl(&["--output", "json", "deploy", "shop", "test"]).ok().json();
    assert_eq!(again["artifact"]["cached"], true);
    assert_eq!(again["built"]["sha256"], first["built"]["sha256"]);
    let shown = fleet.slipctl(&["show", &first["id"].to_string()]).ok().stdout;
    assert!(shown.contains("from commit trunk@4"), "{shown}");

    // Bad refs and an unreachable server: refused before anything is sent, named.
    let before = fleet.current_release("web-1", "shop");
    let missing = fleet.slipctl(&["deploy", "shop", "test", "--ref", "r999"]).code(1);
    assert!(
        missing.stderr.contains("svn ref 'r999'") && missing.stderr.contains("No such revision 999"),
        "{}",
        missing.stderr
    );
    let nobranch = fleet.slipctl(&["deploy", "shop", "test", "--ref", "branches/nope"]).code(1);
    assert!(nobranch.stderr.contains("svn ref 'branches/nope'"), "{}", nobranch.stderr);
    let shape = fleet.slipctl(&["deploy", "shop", "test", "--ref", "../trunk"]).code(2);
    assert!(shape.stderr.contains("is not an svn ref"), "{}", shape.stderr);
    project(&fleet, &format!("svn://127.0.0.1:{}/shop", free_port()));
    let down = fleet.slipctl(&["deploy", "shop", "test"]).code(1);
    assert!(down.stderr.contains("cannot reach svn repository"), "{}", down.stderr);
    assert_eq!(fleet.current_release("web-1", "shop"), before, "nothing moved");
    project(&fleet, &url);

    // The ref picker: trunk and the branch, the tag, trunk's revisions with author and message.
    let token = fleet.slipctl(&["--output", "json", "token", "create", "ci", "--admin"]).ok().json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let server = slipway_tests::Server::start(&fleet);
    let bearer = format!("Bearer {token}");
    let (status, refs) =
        server.call("GET", "/api/v1/projects/shop/envs/test/refs", &[("Authorization", bearer.as_str())], None);
    assert_eq!(status, 200, "{refs}");
    let names = |k: &str| -> Vec<String> {
        refs[k].as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(names("branches"), ["trunk", "branches/sale"]);
    assert_eq!(names("tags"), ["tags/1.0"]);
    let commits = refs["commits"].as_array().unwrap();
    assert_eq!(commits[0]["commit"], "r4", "{refs}");
    assert_eq!(commits[0]["author"], "alice");
    assert_eq!(commits[0]["subject"], "second page");
    assert!(commits[0]["time"].as_i64().unwrap() > 1_700_000_000);
    assert_eq!(commits.iter().map(|c| c["commit"].as_str().unwrap()).collect::<Vec<_>>(), ["r4", "r2", "r1"]);
}
