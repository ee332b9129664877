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

/// The fleet's own `config.toml` (its `[state]` when the tests run on PostgreSQL), then `text`
/// (which replaces what an earlier call added).
fn write_config(fleet: &Fleet, text: &str) {
    const MARK: &str = "\n# sign-in test\n";
    let path = fleet.home.join("config.toml");
    let was = std::fs::read_to_string(&path).unwrap_or_default();
    let base = was.split(MARK).next().unwrap_or("");
    std::fs::write(&path, format!("{base}{MARK}{text}")).unwrap();
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

/// The `Location` and the flow cookie of `GET /login/oidc`.
fn start_flow(server: &Server) -> (String, String) {
    let (status, head, text) = slipway_tests::http(server.port, "GET", "/login/oidc", &[], None);
    assert_eq!(status, 303, "{text}");
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.split_once(": ").filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.to_owned()))
            .unwrap_or_else(|| panic!("no {name} in {head}"))
    };
    let cookie = header("set-cookie");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"), "{cookie}");
    (header("location"), cookie.split(';').next().unwrap().to_owned())
}

fn query(url: &str, key: &str) -> String {
    url.split_once('?')
        .unwrap()
        .1
        .split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {url}"))
        .to_owned()
}

#[test]
fn oidc_signs_in_through_the_provider_with_pkce_and_a_callback_only_its_own_browser_can_use() {
    use fantoccini::Locator;
    use slipway_tests::oidc::OidcProvider;
    if !slipway_tests::require("node with tests/oidc's packages (npm ci)", slipway_tests::oidc::available())
        || !slipway_tests::require("chromium and chromium-driver", slipway_tests::browser::have_browser())
    {
        return;
    }
    let fleet = Fleet::new(1);
    project(&fleet);
    slipway_tests::add_admin(&fleet, "ops");
    let port = OidcProvider::port();
    let work = fleet.path().join("oidc");
    let ca = OidcProvider::certificates(&work);
    write_config(&fleet, &format!("{}{GROUPS}", OidcProvider::config(port, &ca)));
    let server = Server::start(&fleet);
    let base = format!("http://127.0.0.1:{}", server.port);
    let accounts = json!({
        "alice": {"groups": ["site-deployers", "unrelated"]},
        "bob": {"groups": ["staff"]},
    });
    // The provider not up yet: a page that says so (nothing cached from it).
    let (status, _, text) = slipway_tests::http(server.port, "GET", "/login/oidc", &[], None);
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("cannot read the OpenID provider https://127.0.0.1:"), "{text}");
    let _provider = OidcProvider::start(&work, port, &format!("{base}/login/oidc/callback"), &accounts);

    // What the browser is sent to: the provider's authorization endpoint, code flow, PKCE S256,
    // a state and a nonce.
    let (location, _) = start_flow(&server);
    assert!(location.starts_with(&format!("https://127.0.0.1:{port}/auth?")), "{location}");
    assert_eq!(query(&location, "response_type"), "code");
    assert_eq!(query(&location, "code_challenge_method"), "S256");
    for key in ["state", "nonce", "code_challenge"] {
        assert!(query(&location, key).len() >= 22, "{key} in {location}");
    }

    // A real browser: the login page's button, the provider's sign-in, back signed in.
    let driver = slipway_tests::browser::Driver::start();
    crate::web::runtime().block_on(async {
        let c = driver.session_with("en-US", 1280, 800, &["--ignore-certificate-errors"]).await;
        c.goto(&format!("{base}/login")).await.unwrap();
        let button = c.find(Locator::Css("#sso")).await.unwrap();
        assert!(button.text().await.unwrap().contains("Example SSO"));
        button.click().await.unwrap();
        let field = c.wait().for_element(Locator::Css("input[name=login]")).await.unwrap();
        field.send_keys("alice").await.unwrap();
        c.find(Locator::Css("input[name=password]")).await.unwrap().send_keys("whatever-1").await.unwrap();
        c.find(Locator::Css("button[type=submit]")).await.unwrap().click().await.unwrap();
        let who = c.wait().for_element(Locator::Css("div.who strong")).await.unwrap();
        assert_eq!(who.text().await.unwrap(), "alice");
        assert_eq!(c.current_url().await.unwrap().as_str(), format!("{base}/"));
        // Bob is the provider's, but in no group that gives a role here.
        let c2 = driver.session_with("en-US", 1280, 800, &["--ignore-certificate-errors"]).await;
        c2.goto(&format!("{base}/login/oidc")).await.unwrap();
        let field = c2.wait().for_element(Locator::Css("input[name=login]")).await.unwrap();
        field.send_keys("bob").await.unwrap();
        c2.find(Locator::Css("input[name=password]")).await.unwrap().send_keys("whatever-2").await.unwrap();
        c2.find(Locator::Css("button[type=submit]")).await.unwrap().click().await.unwrap();
        let alert = c2.wait().for_element(Locator::Css("[role=alert]")).await.unwrap();
        assert!(alert.text().await.unwrap().contains("no group"), "{}", alert.text().await.unwrap());
        c.close().await.unwrap();
        c2.close().await.unwrap();
    });

    let (cookie, csrf) = server.login("ops", "ops-password");
    let ops = [("Cookie", cookie.as_str()), ("X-CSRF-Token", csrf.as_str())];
    let (_, users) = server.call("GET", "/api/v1/users", &ops, None);
    let alice = users.as_array().unwrap().iter().find(|u| u["user"] == "alice").expect("alice is a user").clone();
    assert_eq!(alice["company"]["via"], "oidc");
    assert_eq!(alice["company"]["subject"], format!("{} alice", OidcProvider::issuer(port)));
    assert_eq!(alice["grants"], json!([{"project": "site", "env": "test", "role": "deployer"}]));
    assert!(alice["company"]["groups"].as_array().unwrap().contains(&json!("unrelated")));

    // An attacker's callback: a state of a flow started elsewhere, without that browser's
    // cookie (login CSRF), is refused; so is a state that is made up, or used once already.
    let (location, flow_cookie) = start_flow(&server);
    let state = query(&location, "state");
    let callback = format!("/login/oidc/callback?state={state}&code=stolen-code");
    let (status, _, text) = slipway_tests::http(server.port, "GET", &callback, &[], None);
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("another browser"), "{text}");
    let (status, _, text) =
        slipway_tests::http(server.port, "GET", &callback, &[("Cookie", flow_cookie.as_str())], None);
    assert_eq!(status, 401, "a state is good once: {text}");
    assert!(text.contains("unknown, used or expired"), "{text}");
    let (status, _, _) =
        slipway_tests::http(server.port, "GET", "/login/oidc/callback?state=made-up&code=x", &[], None);
    assert_eq!(status, 401);
    // The right browser with a code the provider never gave: the provider says no.
    let (location, flow_cookie) = start_flow(&server);
    let state = query(&location, "state");
    let (status, _, text) = slipway_tests::http(
        server.port,
        "GET",
        &format!("/login/oidc/callback?state={state}&code=forged-code"),
        &[("Cookie", flow_cookie.as_str())],
        None,
    );
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("did not take the code"), "{text}");

    // The audit trail has the sign-in, with what it was given.
    let (_, audit) = server.call("GET", "/api/v1/audit?limit=100", &ops, None);
    let signed =
        audit.as_array().unwrap().iter().find(|r| r["action"] == "sign_in" && r["who"] == "alice").unwrap().clone();
    assert!(signed["detail"].as_str().unwrap().starts_with("oidc; groups: site-deployers unrelated"), "{signed}");
    let refusals = audit.as_array().unwrap().iter().filter(|r| r["action"] == "sign_in_failed").count();
    assert!(refusals >= 4, "bob and the three forged callbacks: {audit}");
}
