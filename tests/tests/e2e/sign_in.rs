//! Company sign-in (issue #25 item 1) against real providers: Debian's OpenLDAP `slapd` over
//! ldaps://, and the npm `oidc-provider` under node over https, driven by a real Chromium.
//! Groups become grants by `[[sign_in.group]]`; a filter injected in the user name finds
//! nobody; a local user keeps working until company sign-in is required, but a break-glass
//! admin; the OIDC callback is bound to the browser that started the flow, and used once.

use serde_json::{Value, json};
use slipway_tests::directory::Directory;
use slipway_tests::{Fleet, Repo, Server, wait_for};

fn project(fleet: &Fleet) {
    let repo = Repo::new(fleet.path().join("repo"));
    repo.write("index.html", "v1\n");
    repo.commit("v1");
    let root = fleet.path().join("hosts");
    let file = fleet.path().join("site.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"site\"\nrepo = \"{}\"\n[target]\ndeploy_to = \"{root}/{{host}}/site\"\n\
             current = \"{root}/{{host}}/www/site\"\n[env.test]\nhosts = [\"role=web\"]\n",
            repo.path.display(),
            root = root.display()
        ),
    )
    .unwrap();
    fleet.slipctl(&["project", "apply", "-f", file.to_str().unwrap()]).ok();
}

const GROUPS: &str = "[[sign_in.group]]\ngroup = \"site-deployers\"\ngrants = [\"site:test:deployer\"]\n\
                      [[sign_in.group]]\ngroup = \"site-approvers\"\ngrants = [\"site:test:approver\"]\n";

fn login(server: &Server, user: &str, password: &str) -> (u16, Value) {
    let body = json!({"user": user, "password": password}).to_string();
    server.call("POST", "/api/v1/session", &[("Content-Type", "application/json")], Some(&body))
}

fn roles(doc: &Value) -> Vec<String> {
    let mut out: Vec<String> = doc["roles"]["grants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            format!("{}:{}:{}", g["project"].as_str().unwrap(), g["env"].as_str().unwrap(), g["role"].as_str().unwrap())
        })
        .collect();
    out.sort();
    out
}

fn write_config(fleet: &Fleet, text: &str) {
    std::fs::write(fleet.home.join("config.toml"), text).unwrap();
}

#[test]
fn ldap_binds_as_the_user_maps_groups_to_grants_and_an_injected_filter_finds_nobody() {
    if !slipway_tests::require("slapd (Debian's slapd, ldap-utils)", slipway_tests::directory::available()) {
        return;
    }
    let fleet = Fleet::new(1);
    project(&fleet);
    slipway_tests::add_admin(&fleet, "ops");
    slipway_tests::add_user(&fleet, "carol", &[("site", "test", "viewer")]);
    let directory = Directory::start(
        &fleet.path().join("ldap"),
        &[("alice", "alice-ldap-pass"), ("bob", "bob-ldap-pass"), ("dan", "dan-ldap-pass")],
        &[("site-deployers", &["alice", "dan"]), ("site-approvers", &["alice", "dan"]), ("staff", &["bob"])],
    );
    write_config(&fleet, &format!("{}{GROUPS}", directory.config("")));
    let mut server = Server::start(&fleet);

    // Alice: bound as herself, her two groups are two grants; the name typed in another case
    // is the same user (the directory's uid).
    let (status, doc) = login(&server, "alice", "alice-ldap-pass");
    assert_eq!(status, 200, "{doc}");
    assert_eq!(roles(&doc), ["site:test:approver", "site:test:deployer"]);
    let (status, doc) = login(&server, "ALICE", "alice-ldap-pass");
    assert_eq!((status, doc["user"].as_str()), (200, Some("alice")), "{doc}");

    // Wrong, empty: no. The filter's syntax in the name: a name, which nobody has. Without the
    // escaping, `alic*` alone would find alice and bind as her with her password.
    for (user, password) in [
        ("alice", "wrong-password"),
        ("alice", ""),
        ("alic*", "alice-ldap-pass"),
        ("*)(uid=*", "alice-ldap-pass"),
        ("*", "alice-ldap-pass"),
        ("alice)(|(uid=*", "alice-ldap-pass"),
        ("nobody", "alice-ldap-pass"),
    ] {
        let (status, doc) = login(&server, user, password);
        assert_eq!(status, 401, "{user:?} / {password:?} must not sign in: {doc}");
    }
    // Bob proves who he is but is in no group that gives a role.
    let (status, doc) = login(&server, "bob", "bob-ldap-pass");
    assert_eq!(status, 403, "{doc}");
    assert!(doc["error"].as_str().unwrap().contains("no group"), "{doc}");

    // The admin sees a company account; its grants are the directory's, not to be set here.
    let (cookie, csrf) = server.login("ops", "ops-password");
    let ops = [("Cookie", cookie.as_str()), ("X-CSRF-Token", csrf.as_str()), ("Content-Type", "application/json")];
    let (_, users) = server.call("GET", "/api/v1/users", &ops, None);
    let alice = users.as_array().unwrap().iter().find(|u| u["user"] == "alice").expect("alice is a user").clone();
    assert_eq!(alice["company"]["via"], "ldap");
    assert_eq!(alice["company"]["subject"], "uid=alice,ou=people,dc=example,dc=com");
    let grant = json!({"project": "site", "env": "test", "role": "viewer"}).to_string();
    let (status, doc) = server.call("POST", "/api/v1/users/alice/grants", &ops, Some(&grant));
    assert_eq!(status, 400, "{doc}");
    assert!(doc["error"].as_str().unwrap().contains("company directory"), "{doc}");

    // Taken out of a group in the directory: one grant fewer at the next sign-in.
    directory.remove_member("site-approvers", "alice");
    let (status, doc) = login(&server, "alice", "alice-ldap-pass");
    assert_eq!(status, 200, "{doc}");
    assert_eq!(roles(&doc), ["site:test:deployer"]);

    // On the audit trail: the company sign-ins with their groups, and the failures.
    let (_, audit) = server.call("GET", "/api/v1/audit?limit=200", &ops, None);
    let records = audit.as_array().expect("audit records");
    let ok = records.iter().filter(|r| r["action"] == "sign_in" && r["who"] == "alice").count();
    assert_eq!(ok, 3, "{audit}");
    let last = records.iter().find(|r| r["action"] == "sign_in" && r["who"] == "alice").unwrap();
    assert!(last["detail"].as_str().unwrap().starts_with("ldap; groups: site-deployers"), "{last}");
    let failed: Vec<&str> =
        records.iter().filter(|r| r["action"] == "sign_in_failed").map(|r| r["who"].as_str().unwrap()).collect();
    for who in ["alic*", "*)(uid=*", "bob"] {
        assert!(failed.contains(&who), "{who} in {failed:?}");
    }

    // Company sign-in required: carol's right local password is refused, the break-glass
    // admin's is not, and alice still signs in through the directory.
    server.stop();
    write_config(
        &fleet,
        &format!("[sign_in]\nrequire = true\nbreak_glass = [\"ops\"]\n{}{GROUPS}", directory.config("")),
    );
    let server = Server::start(&fleet);
    let (status, doc) = login(&server, "carol", "carol-password");
    assert_eq!(status, 403, "{doc}");
    assert!(doc["error"].as_str().unwrap().contains("company sign-in is required"), "{doc}");
    assert_eq!(login(&server, "carol", "not-her-password").0, 401, "a wrong one says nothing more");
    assert_eq!(login(&server, "ops", "ops-password").0, 200);
    assert_eq!(login(&server, "alice", "alice-ldap-pass").0, 200);

    // The directory gone: the directory's trouble, said as such (not a wrong password).
    let port = directory.tls_port;
    drop(directory);
    wait_for("slapd to stop", || std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    let (status, doc) = login(&server, "alice", "alice-ldap-pass");
    assert_eq!(status, 503, "{doc}");
    assert!(doc["error"].as_str().unwrap().contains("cannot reach the company directory"), "{doc}");
}

#[test]
fn a_directory_that_would_see_passwords_in_clear_stops_the_server_with_the_fix() {
    let fleet = Fleet::new(0);
    write_config(
        &fleet,
        "[sign_in.ldap]\nurl = \"ldap://127.0.0.1:389\"\nbind_dn = \"cn=s\"\nbind_password = \"x\"\n\
         base_dn = \"dc=example,dc=com\"\n",
    );
    let out = std::process::Command::new(slipway_tests::bin("slipctl"))
        .arg("--home")
        .arg(&fleet.home)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("[sign_in.ldap] url 'ldap://127.0.0.1:389' would send passwords in clear"), "{stderr}");
    assert!(stderr.contains("starttls = true"), "{stderr}");
}
