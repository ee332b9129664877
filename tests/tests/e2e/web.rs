//! The web pages in a real headless Chromium against a real `slipctl serve` and real agents:
//! logging in, the dashboard's grid with what the hosts run, the Chinese locale, a phone-width
//! screen, and logging out (screenshots in `target/screenshots/`).

use fantoccini::Locator;
use slipway_tests::browser::{Driver, have_browser, screenshot};
use slipway_tests::{Fleet, Repo, Server, add_user, http_get, require};

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Two agents with `project` deployed at v1 (index.html); its repository and the release.
fn deployed(project: &str) -> (Fleet, Repo, String) {
    let fleet = Fleet::new(2);
    let repo = Repo::new(fleet.path().join("repo"));
    repo.write("index.html", "v1\n");
    repo.commit("v1");
    fleet.apply_project(project, &repo.path, "");
    let release = fleet.deploy_ok(project);
    (fleet, repo, release)
}

#[test]
fn log_in_see_the_dashboard_in_english_and_chinese_and_log_out() {
    if !require("chromium and chromium-driver", have_browser()) {
        return;
    }
    let (fleet, repo, release) = deployed("shop");
    // A deploy whose hook fails, for its replay: the failure marked, stderr kept.
    let broken =
        format!("pre_release = [\"echo about to fail; echo boom >&2; exit 3\"]\n{}", slipway_tests::hook_user_line());
    fleet.apply_project_full("broken", &repo.path, "", &broken, "");
    let failed = fleet.slipctl(&["--output", "json", "deploy", "broken", "test"]).code(1).json();
    let failed_id = failed["id"].as_u64().expect("the failed deploy is numbered");
    slipway_tests::add_admin(&fleet, "ops");
    let mut cmd = std::process::Command::new(slipway_tests::bin("slipctl"));
    cmd.arg("--home").arg(&fleet.home).args(["user", "add", "dev", "--password-stdin"]);
    let mut child = cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::null()).spawn().unwrap();
    use std::io::Write;
    writeln!(child.stdin.take().unwrap(), "dev-password").unwrap();
    assert!(child.wait().unwrap().success());
    fleet.slipctl(&["user", "grant", "dev", "shop", "test", "viewer"]).ok();
    let server = Server::start(&fleet);
    let base = format!("http://127.0.0.1:{}", server.port);
    let driver = Driver::start();

    runtime().block_on(async {
        // Not logged in: the dashboard sends the browser to the login page.
        let c = driver.session("en-US", 1280, 800).await;
        c.goto(&format!("{base}/")).await.unwrap();
        assert!(c.current_url().await.unwrap().path().ends_with("/login"));
        // A wrong password says so, in the page.
        c.find(Locator::Css("#user")).await.unwrap().send_keys("dev").await.unwrap();
        c.find(Locator::Css("#password")).await.unwrap().send_keys("nope-nope").await.unwrap();
        click(&c, "form button[type=submit]").await;
        let alert = c.wait().for_element(Locator::Css("[role=alert]")).await.unwrap();
        assert!(alert.text().await.unwrap().contains("Wrong user or password"));
        c.find(Locator::Css("#user")).await.unwrap().send_keys("dev").await.unwrap();
        c.find(Locator::Css("#password")).await.unwrap().send_keys("dev-password").await.unwrap();
        click(&c, "form button[type=submit]").await;

        // The grid: the cell of (shop, test) says both hosts run the release just deployed.
        let cell = c.wait().for_element(Locator::Css("article.cell[data-project=shop][data-env=test]")).await.unwrap();
        let text = cell.text().await.unwrap();
        assert!(text.contains(&format!("2 on {release}")), "{text}");
        assert!(text.contains("succeeded"), "status in words, not colour alone: {text}");
        // Keyboard first: the first Tab reaches the link that skips to the content.
        c.find(Locator::Css("body")).await.unwrap().send_keys("\u{e004}").await.unwrap();
        let focused = c.active_element().await.unwrap().text().await.unwrap();
        assert_eq!(focused, "Skip to the content");
        let csrf = c.find(Locator::Css("meta[name=csrf-token]")).await.unwrap().attr("content").await.unwrap();
        assert_eq!(csrf.map(|t| t.len()), Some(64), "the page carries the session's CSRF token");
        screenshot(&c, "dashboard").await;

        // Phone width: one column, nothing cut off.
        c.set_window_size(360, 800).await.unwrap();
        let width: f64 = c
            .execute("return document.querySelector('article.cell').getBoundingClientRect().width", vec![])
            .await
            .unwrap()
            .as_f64()
            .unwrap();
        assert!(width <= 360.0, "the cell fits a 360 px screen: {width}");
        let overflow: bool = c
            .execute("return document.documentElement.scrollWidth > window.innerWidth", vec![])
            .await
            .unwrap()
            .as_bool()
            .unwrap();
        assert!(!overflow, "no sideways scrolling at 360 px");
        screenshot(&c, "dashboard-phone").await;

        // Log out: back to the login page, and the dashboard is closed again.
        c.set_window_size(1280, 800).await.unwrap();
        click(&c, "header form[action='/logout'] button").await;
        c.wait().for_element(Locator::Css("#password")).await.unwrap();
        c.goto(&format!("{base}/")).await.unwrap();
        assert!(c.current_url().await.unwrap().path().ends_with("/login"));
        c.close().await.unwrap();

        // A browser that prefers Chinese gets Chinese labels; the switch turns them English.
        let zh = driver.session("zh-CN", 1280, 800).await;
        zh.goto(&format!("{base}/login")).await.unwrap();
        let heading = zh.find(Locator::Css("h1")).await.unwrap().text().await.unwrap();
        assert_eq!(heading, "登录");
        zh.find(Locator::Css("#user")).await.unwrap().send_keys("dev").await.unwrap();
        zh.find(Locator::Css("#password")).await.unwrap().send_keys("dev-password").await.unwrap();
        click(&zh, "form button[type=submit]").await;
        let cell = zh.wait().for_element(Locator::Css("article.cell")).await.unwrap();
        let text = cell.text().await.unwrap();
        assert!(text.contains("主机上的版本") && text.contains("成功"), "{text}");
        screenshot(&zh, "dashboard-zh").await;
        click(&zh, "a.lang").await;
        let h1 = zh.wait().for_element(Locator::Css("main h1")).await.unwrap();
        assert_eq!(h1.text().await.unwrap(), "Dashboard");
        assert!(!has(&zh, "nav a[href='/users']").await, "no users page for a non-admin");
        zh.goto(&format!("{base}/users")).await.unwrap();
        let refused = zh.find(Locator::Css("[role=alert]")).await.unwrap().text().await.unwrap();
        assert!(refused.contains("403") && refused.contains("dev is not an admin"), "{refused}");
        zh.close().await.unwrap();

        // The failed deploy replays: the hook's stderr kept and marked, the failure in red, the
        // outcome in words.
        let c = driver.session("en-US", 1280, 800).await;
        log_in(&c, &base, "ops").await;
        c.goto(&format!("{base}/deploys/{failed_id}")).await.unwrap();
        let pane = c.find(Locator::Css("article.pane[data-host='web-1']")).await.unwrap();
        let stderr = pane.find(Locator::Css(".out.stderr")).await.unwrap().text().await.unwrap();
        assert!(stderr.contains("boom"), "{stderr}");
        let bad = pane.find(Locator::Css(".line.bad")).await.unwrap().text().await.unwrap();
        assert!(bad.starts_with('✗'), "a failure is marked, not only coloured: {bad}");
        let outcome = c.find(Locator::Css("div.outcome.bad")).await.unwrap().text().await.unwrap();
        assert!(outcome.contains("failed"), "{outcome}");
        screenshot(&c, "deploy-failed").await;

        // The admin's users page: grant the developer deployer on shop/test, then revoke it.
        click(&c, "nav a[href='/users']").await;
        c.wait().for_element(Locator::Css("table.users")).await.unwrap();
        c.find(Locator::Css("#g-user")).await.unwrap().select_by_value("dev").await.unwrap();
        c.find(Locator::Css("#g-pair")).await.unwrap().select_by_value("shop/test").await.unwrap();
        c.find(Locator::Css("#g-role")).await.unwrap().select_by_value("deployer").await.unwrap();
        click(&c, "form[action='/users/grant'] button").await;
        let row = wait_text(&c, "tr", "deployer").await;
        assert!(row.contains("dev") && row.contains("shop/test"), "{row}");
        screenshot(&c, "users").await;
        let revoke = "tr[data-user='dev'] form[action='/users/revoke'] input[name=role][value=deployer]";
        assert!(has(&c, revoke).await);
        click_xpath(&c, "//tr[@data-user='dev']//form[.//input[@name='role'][@value='deployer']]//button").await;
        wait_gone(&c, revoke).await;
        // A maintainer is granted on the whole project (`*`) from the same form.
        c.find(Locator::Css("#g-user")).await.unwrap().select_by_value("dev").await.unwrap();
        c.find(Locator::Css("#g-pair")).await.unwrap().select_by_value("shop/*").await.unwrap();
        c.find(Locator::Css("#g-role")).await.unwrap().select_by_value("maintainer").await.unwrap();
        click(&c, "form[action='/users/grant'] button").await;
        let row = wait_text(&c, "tr", "maintainer").await;
        assert!(row.contains("dev") && row.contains("shop/*"), "{row}");
        click_xpath(&c, "//tr[@data-user='dev']//form[.//input[@name='role'][@value='maintainer']]//button").await;
        wait_gone(&c, "tr[data-user='dev'] form[action='/users/revoke'] input[name=role][value=maintainer]").await;

        // Add a user: the generated password is shown once and logs in; then remove the user.
        c.find(Locator::Css("#u-name")).await.unwrap().send_keys("newbie").await.unwrap();
        click(&c, "form[action='/users/add'] button").await;
        let password = c.wait().for_element(Locator::Css(".notice code.password")).await.unwrap().text().await.unwrap();
        assert_eq!(password.len(), 20);
        server.login("newbie", &password);
        assert!(!has(&c, "tr[data-user='ops'] form[action='/users/remove']").await, "no removing oneself");
        click(&c, "tr[data-user='newbie'] form[action='/users/remove'] button").await;
        c.wait().for_element(Locator::Css("table.users")).await.unwrap();
        assert!(!has(&c, "tr[data-user='newbie']").await, "removed");
        c.close().await.unwrap();
    });
}

/// Text of the first element `css` matches, once it contains `text` (the page updates itself).
async fn wait_text(c: &fantoccini::Client, css: &str, text: &str) -> String {
    let xpath = css_to_contains(css, text);
    let el = c
        .wait()
        .at_most(std::time::Duration::from_secs(60))
        .for_element(Locator::XPath(&xpath))
        .await
        .unwrap_or_else(|e| panic!("no {css} containing {text:?}: {e}"));
    el.text().await.unwrap()
}

/// An XPath for "an element with this class (or tag) containing this text".
fn css_to_contains(css: &str, text: &str) -> String {
    let node = match css.split_once('.') {
        Some((tag, class)) => {
            let tag = if tag.is_empty() { "*" } else { tag };
            format!("//{tag}[contains(concat(' ', normalize-space(@class), ' '), ' {class} ')]")
        }
        None => format!("//{css}"),
    };
    format!("{node}[contains(., '{text}')]")
}

pub(crate) async fn log_in(c: &fantoccini::Client, base: &str, user: &str) {
    c.goto(&format!("{base}/login")).await.unwrap();
    c.find(Locator::Css("#user")).await.unwrap().send_keys(user).await.unwrap();
    c.find(Locator::Css("#password")).await.unwrap().send_keys(&format!("{user}-password")).await.unwrap();
    click(c, "form button[type=submit]").await;
    c.wait().for_element(Locator::Css("main h1")).await.unwrap();
}

pub(crate) async fn click(c: &fantoccini::Client, css: &str) {
    c.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css}: {e}")).click().await.unwrap();
}

async fn click_xpath(c: &fantoccini::Client, xpath: &str) {
    c.find(Locator::XPath(xpath)).await.unwrap_or_else(|e| panic!("no {xpath}: {e}")).click().await.unwrap();
}

async fn has(c: &fantoccini::Client, css: &str) -> bool {
    !c.find_all(Locator::Css(css)).await.unwrap().is_empty()
}

/// Wait until nothing matches `css` (the page after a form's POST no longer shows it).
async fn wait_gone(c: &fantoccini::Client, css: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while has(c, css).await {
        assert!(std::time::Instant::now() < deadline, "{css} is still shown after 60 s");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Walle's go-live flow, all in the browser, with nginx serving `current`: a developer makes a
/// ticket for a tag picked in the picker, an approver approves in a second session, the
/// developer deploys and watches the host panes fill live (a hook's line, then the outcome),
/// nginx serves the new page, rollback from the ticket (after a confirmation naming the hosts)
/// brings the old page back; a viewer gets no buttons and a direct POST is refused; the
/// approver's Chinese browser shows Chinese; the project page runs 检测.
#[test]
fn the_walle_flow_ticket_approve_deploy_live_panes_rollback_in_a_real_browser() {
    if !require("chromium, chromium-driver and nginx", have_browser() && slipway_tests::have_nginx()) {
        return;
    }
    let fleet = Fleet::new(2);
    let gate_dir = fleet.path().join("gate");
    std::fs::create_dir_all(&gate_dir).unwrap();
    slipway_tests::traversable(&gate_dir);
    let gate = gate_dir.join("go");
    let repo = Repo::new(fleet.path().join("repo"));
    repo.write("index.html", "old page\n");
    repo.commit("the old page");
    // The deploy waits in its hook until the test has seen it mid-way (an event, not a clock).
    let hook = format!(
        "pre_release = [\"echo hook says hello; while [ ! -e {} ]; do sleep 0.05; done\"]\n{}",
        gate.display(),
        slipway_tests::hook_user_line()
    );
    fleet.apply_project_full("shop", &repo.path, "", &hook, "approval = { required = 1 }\n");
    std::fs::write(&gate, "").unwrap();
    fleet.deploy_ok("shop");
    std::fs::remove_file(&gate).unwrap();
    repo.write("index.html", "new page\n");
    let new_commit = repo.commit("the new page");
    repo.git(&["tag", "v2.0"]);
    add_user(&fleet, "dev", &[("shop", "test", "deployer")]);
    add_user(&fleet, "boss", &[("shop", "test", "approver")]);
    add_user(&fleet, "guest", &[("shop", "test", "viewer")]);
    let roots: Vec<_> = ["web-1", "web-2"].iter().map(|h| fleet.current(h, "shop")).collect();
    let (_nginx, ports) = slipway_tests::nginx(&fleet.path().join("nginx"), &roots);
    assert_eq!(http_get(ports[0], "/index.html").unwrap().1, "old page\n");
    let server = Server::start(&fleet);
    let base = format!("http://127.0.0.1:{}", server.port);
    let driver = Driver::start();

    runtime().block_on(async {
        // The viewer keeps the dashboard open throughout: it follows the deploy without a reload.
        let guest = driver.session("en-US", 1280, 900).await;
        log_in(&guest, &base, "guest").await;
        guest.execute("window.slipwayMarker = 'not reloaded'", vec![]).await.unwrap();
        assert!(!has(&guest, "a[href$='/tickets/new']").await, "a viewer is offered no new ticket");

        // The developer: a new ticket from the dashboard, the tag picked in the picker.
        let dev = driver.session("en-US", 1280, 900).await;
        log_in(&dev, &base, "dev").await;
        click(&dev, "article.cell[data-project=shop] a[href$='/tickets/new']").await;
        dev.wait().for_element(Locator::Css("select#ref")).await.unwrap();
        dev.find(Locator::Css("#title")).await.unwrap().send_keys("Ship the new page").await.unwrap();
        dev.find(Locator::Css("#description")).await.unwrap().send_keys("v2.0 for the spring sale").await.unwrap();
        let tags = dev.find(Locator::Css("optgroup[label^='Tags'] option")).await.unwrap();
        assert_eq!(tags.attr("value").await.unwrap().as_deref(), Some("v2.0"));
        dev.find(Locator::Css("select#ref")).await.unwrap().select_by_value("v2.0").await.unwrap();
        let resolved = dev.find(Locator::Css("#resolved")).await.unwrap().text().await.unwrap();
        assert_eq!(resolved, new_commit[..7], "the picker shows the commit the tag resolves to");
        // Its times are in the viewer's zone (UTC+8 here), as every other time on the pages.
        let utc = tags.attr("data-utc").await.unwrap().unwrap();
        let text = tags.text().await.unwrap();
        assert!(!text.contains(&utc), "the picker shows the server's UTC ({utc}): {text}");
        screenshot(&dev, "new-ticket").await;
        click(&dev, "form.ticket-form button[type=submit]").await;
        let head = wait_text(&dev, "div.ticket-head", "pending approval").await;
        assert!(head.contains(&new_commit[..7]) && head.contains("v2.0"), "{head}");
        let ticket_url = dev.current_url().await.unwrap();
        let id: u64 = ticket_url.path().rsplit('/').next().unwrap().parse().unwrap();
        // Before it deploys, the ticket says which hosts it will touch.
        let touch = wait_text(&dev, "p.will-touch", "web-2").await;
        assert!(touch.contains("web-1"), "{touch}");
        let old_release = fleet.current_release("web-1", "shop").unwrap();
        assert!(!has(&dev, "form[action$='/deploy']").await, "nothing to deploy before approval");
        assert!(!has(&dev, "form[action$='/approve']").await, "the requester cannot approve");

        // The approver, in a second browser session (Chinese): approves with a comment.
        let boss = driver.session("zh-CN", 1280, 900).await;
        log_in(&boss, &base, "boss").await;
        boss.goto(ticket_url.as_str()).await.unwrap();
        let h1 = boss.find(Locator::Css("main h1")).await.unwrap().text().await.unwrap();
        assert!(h1.starts_with("上线单"), "Chinese labels: {h1}");
        // Times in the viewer's zone (this browser's is UTC+8), not the server's UTC.
        let time = boss.find(Locator::Css("div.ticket-head time[data-ts]")).await.unwrap();
        let ts: i64 = time.attr("data-ts").await.unwrap().unwrap().parse().unwrap();
        let shown = time.text().await.unwrap();
        let (_, _, _, h, m, sec) = slipway_common::time::civil_from_unix(ts + 8 * 3600);
        assert!(shown.contains(&format!("{h}:{m:02}:{sec:02}")), "{shown} is not {h}:{m:02}:{sec:02} in UTC+8");
        assert!(!shown.contains("UTC"), "{shown}");
        boss.find(Locator::Css("#comment")).await.unwrap().send_keys("looks good").await.unwrap();
        let approve = boss.find(Locator::Css("form.approve button.primary")).await.unwrap();
        assert_eq!(approve.text().await.unwrap(), "审核通过");
        approve.click().await.unwrap();
        wait_text(&boss, "div.ticket-head", "已审核").await;

        // The developer's page shows the approval and the deploy button without a reload.
        wait_text(&dev, "div.ticket-head", "looks good").await;
        let deploy = dev.wait().for_element(Locator::Css("form[action$='/deploy'] button")).await.unwrap();
        deploy.click().await.unwrap();
        // Mid-deploy: the hook's line in each host's pane while the hook holds the deploy.
        for host in ["web-1", "web-2"] {
            let pane = format!("article.pane[data-host='{host}']");
            dev.wait().for_element(Locator::Css(&pane)).await.unwrap();
            let xpath =
                format!("//article[@data-host='{host}']//div[contains(@class,'log')][contains(., 'hook says hello')]");
            dev.wait().at_most(std::time::Duration::from_secs(60)).for_element(Locator::XPath(&xpath)).await.unwrap();
        }
        assert_eq!(http_get(ports[0], "/index.html").unwrap().1, "old page\n", "nothing live yet");
        screenshot(&dev, "ticket-mid-deploy").await;
        // Meanwhile the viewer's dashboard shows the deploy under way, with its progress.
        let running = wait_text(&guest, "dd.running", "in progress").await;
        assert!(running.contains("0/2"), "no host done yet: {running}");
        screenshot(&guest, "dashboard-mid-deploy").await;
        std::fs::write(&gate, "").unwrap();
        let outcome = wait_text(&dev, "div.outcome", "succeeded").await;
        assert!(outcome.contains("Outcome"), "{outcome}");
        for host in ["web-1", "web-2"] {
            let xpath = format!("//article[@data-host='{host}']//span[contains(@class,'state')][contains(., 'live')]");
            dev.wait().for_element(Locator::XPath(&xpath)).await.unwrap();
        }
        for port in &ports {
            assert_eq!(http_get(*port, "/index.html").unwrap().1, "new page\n");
        }
        wait_text(&dev, "div.ticket-head", "succeeded").await;
        screenshot(&dev, "ticket-deployed").await;
        let new_release = fleet.current_release("web-1", "shop").unwrap();
        let cell = wait_text(&guest, "article.cell", &format!("2 on {new_release}")).await;
        assert!(cell.contains("Ship the new page"), "the last ticket, live: {cell}");
        assert!(cell.contains(&format!("Ticket #{id}")) && cell.contains("Deploy #"), "numbers told apart: {cell}");
        let marker = guest.execute("return window.slipwayMarker", vec![]).await.unwrap();
        assert_eq!(marker, "not reloaded", "the dashboard updated in place");

        // The controller's pane reads in the approver's language too.
        boss.goto(ticket_url.as_str()).await.unwrap();
        let controller = boss.find(Locator::Css(".pane.controller .log")).await.unwrap().text().await.unwrap();
        assert!(controller.contains("拉取") && controller.contains("台主机"), "{controller}");
        // A finished ticket replays its output on a fresh load.
        dev.goto(ticket_url.as_str()).await.unwrap();
        let log = dev.find(Locator::Css("article.pane[data-host='web-1'] .log")).await.unwrap().text().await.unwrap();
        assert!(log.contains("hook says hello") && log.contains("live"), "{log}");

        // The viewer: no buttons, and a direct POST is refused.
        guest.goto(ticket_url.as_str()).await.unwrap();
        guest.wait().for_element(Locator::Css("div.ticket-head")).await.unwrap();
        for form in ["deploy", "rollback", "cancel", "approve"] {
            assert!(!has(&guest, &format!("form[action$='/{form}']")).await, "a viewer has no {form} button");
        }
        let (cookie, csrf) = server.login("guest", "guest-password");
        let form = format!("csrf_token={csrf}");
        let headers = [("Cookie", cookie.as_str()), ("Content-Type", "application/x-www-form-urlencoded")];
        let (status, _, body) =
            slipway_tests::http(server.port, "POST", &format!("/tickets/{id}/deploy"), &headers, Some(&form));
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("guest may not act as deployer"), "the refusal says why: {body}");
        // A form posted without the session's CSRF token is refused too, even for a deployer.
        let (cookie, _) = server.login("dev", "dev-password");
        let headers = [("Cookie", cookie.as_str()), ("Content-Type", "application/x-www-form-urlencoded")];
        let (status, _, body) =
            slipway_tests::http(server.port, "POST", &format!("/tickets/{id}/cancel"), &headers, Some("x=1"));
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("CSRF"), "{body}");
        guest.close().await.unwrap();

        // Rollback from the ticket: a confirmation naming what changes where, then the old page.
        click(&dev, "form[action$='/rollback'] button").await;
        let confirm = dev.wait().for_element(Locator::Css("section.confirm")).await.unwrap().text().await.unwrap();
        assert!(confirm.contains("web-1") && confirm.contains("web-2"), "{confirm}");
        let current = fleet.current_release("web-1", "shop").unwrap();
        assert!(confirm.contains(&current), "names the release leaving: {confirm}");
        click(&dev, "section.confirm button.danger").await;
        wait_text(&dev, "div.outcome", "succeeded").await;
        for port in &ports {
            assert_eq!(http_get(*port, "/index.html").unwrap().1, "old page\n");
        }
        // The rollback ticket names the release it restores, not the ticket's ref and commit.
        let h1 = dev.find(Locator::Css("main h1")).await.unwrap().text().await.unwrap();
        assert!(h1.starts_with("Roll back ticket") && h1.contains(&format!("#{id}")), "{h1}");
        let head = dev.find(Locator::Css("div.ticket-head")).await.unwrap().text().await.unwrap();
        assert!(head.contains("Restores") && head.contains(&old_release), "{head}");
        assert!(!head.contains("v2.0"), "{head}");
        let rollback_url = dev.current_url().await.unwrap();
        boss.goto(rollback_url.as_str()).await.unwrap();
        let h1 = boss.find(Locator::Css("main h1")).await.unwrap().text().await.unwrap();
        assert!(h1.starts_with("回滚上线单") && !h1.contains("roll back"), "{h1}");
        dev.goto(ticket_url.as_str()).await.unwrap();
        wait_text(&dev, "div.ticket-head", "rolled back").await;
        // At phone width the ticket page is one column, nothing cut off.
        dev.set_window_size(360, 800).await.unwrap();
        let overflow =
            dev.execute("return document.documentElement.scrollWidth > window.innerWidth", vec![]).await.unwrap();
        assert_eq!(overflow, false, "no sideways scrolling at 360 px");
        screenshot(&dev, "ticket-phone").await;
        dev.set_window_size(1280, 900).await.unwrap();

        // The project page: hosts with what they run and keep, and 检测 with its table.
        boss.goto(&format!("{base}/projects/shop/envs/test")).await.unwrap();
        let hosts = boss.find(Locator::Css("table.hosts")).await.unwrap().text().await.unwrap();
        assert!(hosts.contains("web-1") && hosts.contains(&fleet.current_release("web-1", "shop").unwrap()), "{hosts}");
        let facts = boss.find(Locator::Css("dl.facts")).await.unwrap().text().await.unwrap();
        assert!(facts.contains("并行") && !facts.contains("parallel"), "the strategy in Chinese: {facts}");
        assert!(!hosts.contains("rolled back from") && hosts.contains("已回滚"), "why each is kept: {hosts}");
        click(&boss, "form[action$='/check'] button").await;
        let check = boss.wait().for_element(Locator::Css("section.check")).await.unwrap().text().await.unwrap();
        assert!(check.contains("检测") && check.contains("web-2"), "{check}");
        screenshot(&boss, "project-zh").await;
        // From the project page, back to the new release (retained on both hosts), by name,
        // after a confirmation naming each host's change; the new page is served again.
        dev.goto(&format!("{base}/projects/shop/envs/test")).await.unwrap();
        dev.wait().for_element(Locator::Css("table.hosts")).await.unwrap();
        screenshot(&dev, "project").await;
        dev.find(Locator::Css("select#to")).await.unwrap().select_by_value(&new_release).await.unwrap();
        click(&dev, "form.rollback button").await;
        let confirm = dev.wait().for_element(Locator::Css("section.confirm")).await.unwrap().text().await.unwrap();
        assert!(confirm.contains(&new_release) && confirm.contains("web-2"), "{confirm}");
        click(&dev, "section.confirm button.danger").await;
        wait_text(&dev, "div.outcome", "succeeded").await;
        for port in &ports {
            assert_eq!(http_get(*port, "/index.html").unwrap().1, "new page\n");
        }

        // History, filtered by outcome and person; the agents page.
        dev.goto(&format!("{base}/history?outcome=succeeded&who=dev")).await.unwrap();
        let rows = dev.find_all(Locator::Css("table.history tbody tr")).await.unwrap();
        assert_eq!(rows.len(), 3, "dev's deploy and two rollbacks");
        dev.goto(&format!("{base}/agents")).await.unwrap();
        let agents = dev.find(Locator::Css("table.agents")).await.unwrap().text().await.unwrap();
        assert!(agents.contains("web-1") && agents.contains("web-2"), "{agents}");
        dev.goto(&format!("{base}/")).await.unwrap();
        screenshot(&dev, "dashboard-after").await;
        boss.close().await.unwrap();
        dev.close().await.unwrap();
    });
}

/// A canary pause in the browser: the ticket's page shows, live, that the canary is up and the
/// others wait, with promote and abort for a deployer; promote carries the rollout on.
#[test]
fn a_paused_canary_is_promoted_from_the_ticket_page() {
    if !require("chromium and chromium-driver", have_browser()) {
        return;
    }
    let (fleet, repo, _) = deployed("site");
    repo.write("index.html", "v2\n");
    repo.commit("v2");
    let rollout = "[rollout]\nstrategy = \"serial\"\ncanary_pause = true\n";
    fleet.apply_project_full("site", &repo.path, rollout, "", "canary = [\"web-1\"]\n");
    add_user(&fleet, "dev", &[("site", "test", "deployer")]);
    add_user(&fleet, "guest", &[("site", "test", "viewer")]);
    let server = Server::start(&fleet);
    let base = format!("http://127.0.0.1:{}", server.port);
    let page = |host: &str| std::fs::read_to_string(fleet.current(host, "site").join("index.html")).unwrap();
    let driver = Driver::start();
    runtime().block_on(async {
        let dev = driver.session("en-US", 1280, 900).await;
        log_in(&dev, &base, "dev").await;
        dev.goto(&format!("{base}/projects/site/envs/test/tickets/new")).await.unwrap();
        dev.find(Locator::Css("#title")).await.unwrap().send_keys("v2 behind a canary").await.unwrap();
        click(&dev, "form.ticket-form button[type=submit]").await;
        // No approval asked in test: the ticket is approved at once and can be deployed.
        dev.wait().for_element(Locator::Css("form[action$='/deploy'] button")).await.unwrap().click().await.unwrap();
        let paused = wait_text(&dev, "div.paused", "The canary is live").await;
        assert!(paused.contains("Promote"), "{paused}");
        assert_eq!((page("web-1"), page("web-2")), ("v2\n".to_owned(), "v1\n".to_owned()), "only the canary moved");
        screenshot(&dev, "ticket-paused").await;

        // A viewer sees the pause but no buttons for it.
        let guest = driver.session("en-US", 1280, 900).await;
        log_in(&guest, &base, "guest").await;
        guest.goto(dev.current_url().await.unwrap().as_str()).await.unwrap();
        guest.wait().for_element(Locator::Css("div.ticket-head")).await.unwrap();
        assert!(!has(&guest, "form[action$='/promote']").await, "a viewer cannot promote");
        guest.close().await.unwrap();

        click(&dev, "form[action$='/promote'] button").await;
        wait_text(&dev, "div.ticket-head", "succeeded").await;
        assert_eq!((page("web-1"), page("web-2")), ("v2\n".to_owned(), "v2\n".to_owned()));
        dev.close().await.unwrap();
    });
}

/// A live page's stream follows the viewer's grants as they are now: revoking the grant (or
/// logging out) while the dashboard is open stops its cells at once (`reload`, and the page
/// then shows nothing of that env), instead of streaming them with the grants of the moment the
/// page opened.
#[test]
fn a_live_dashboard_stops_showing_an_env_when_its_grant_is_revoked() {
    let (fleet, _repo, release) = deployed("shop");
    add_user(&fleet, "dev", &[("shop", "test", "viewer")]);
    let server = Server::start(&fleet);
    let (cookie, _) = server.login("dev", "dev-password");
    let headers = [("Cookie", cookie.as_str())];
    let mut live = slipway_tests::SseReader::open(server.port, "/live/dashboard", &headers);
    assert_eq!(live.status, 200);
    // Opened without the page's change count: every cell is sent first.
    let first = live.next_event().expect("the cells");
    assert_eq!(first.event, "fragment");
    assert!(first.data["html"].as_str().unwrap().contains(&release), "{:?}", first.data);
    // The stream's keep-alives would hold a blocking read forever: read on a thread, and give
    // up (failing) if nothing comes within 20 s.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(live.next_event());
    });
    fleet.slipctl(&["user", "revoke", "dev", "shop", "test", "viewer"]).ok();
    let next = rx.recv_timeout(std::time::Duration::from_secs(20)).expect("an event within 20 s of the revoke");
    let next = next.expect("an event, not the stream's end");
    assert_eq!(next.event, "reload", "the cell went with the grant: {next:?}");
    let (status, _, page) = slipway_tests::http(server.port, "GET", "/", &headers, None);
    assert_eq!(status, 200);
    assert!(!page.contains("data-key=\"shop/test\""), "the reloaded page shows nothing of shop/test");
}

/// With the browser's back/forward cache, a live page left for another keeps its event stream
/// unless it closes it: about six such pages held every HTTP/1.1 connection to the server and
/// the next page never loaded. Eight live pages and back: every page loads, and one more after.
#[test]
fn eight_live_pages_and_back_every_page_loads() {
    if !require("chromium and chromium-driver", have_browser()) {
        return;
    }
    let (fleet, _repo, _release) = deployed("shop");
    add_user(&fleet, "dev", &[("shop", "test", "deployer")]);
    let server = Server::start(&fleet);
    let (cookie, csrf) = server.login("dev", "dev-password");
    let headers = [("Cookie", cookie.as_str()), ("X-CSRF-Token", csrf.as_str()), ("Content-Type", "application/json")];
    let tickets: Vec<u64> = (1..=7)
        .map(|i| {
            let body =
                serde_json::json!({"project": "shop", "env": "test", "title": format!("change {i}")}).to_string();
            let (status, t) = server.call("POST", "/api/v1/tickets", &headers, Some(&body));
            assert_eq!(status, 201, "{t}");
            t["id"].as_u64().unwrap()
        })
        .collect();
    let base = format!("http://127.0.0.1:{}", server.port);
    let driver = Driver::start();
    runtime().block_on(async {
        let c = driver.session("en-US", 1280, 800).await;
        // A page that cannot load fails the test in seconds, not after WebDriver's 300.
        let timeouts = fantoccini::wd::TimeoutConfiguration::new(None, Some(std::time::Duration::from_secs(15)), None);
        c.update_timeouts(timeouts).await.unwrap();
        log_in(&c, &base, "dev").await;
        let mut pages = vec![format!("{base}/")];
        pages.extend(tickets.iter().map(|t| format!("{base}/tickets/{t}")));
        for (i, url) in pages.iter().enumerate() {
            c.goto(url).await.unwrap_or_else(|e| panic!("live page {} ({url}) did not load: {e}", i + 1));
            c.wait().for_element(Locator::Css("main h1")).await.unwrap();
        }
        for back in 1..pages.len() {
            c.back().await.unwrap_or_else(|e| panic!("going back {back} page(s) did not load: {e}"));
            let h1 = c.wait().for_element(Locator::Css("main h1")).await.unwrap().text().await.unwrap();
            assert!(!h1.is_empty(), "page {back} back has its heading");
        }
        assert_eq!(c.current_url().await.unwrap().as_str(), pages[0], "back at the first page");
        c.goto(&format!("{base}/history")).await.expect("one more page loads after them all");
        c.wait().for_element(Locator::Css("main h1")).await.unwrap();
        c.close().await.unwrap();
    });
}

/// Walle's 项目配置 in the browser: an admin makes a project through the form for a real
/// repository, with an env of two registered agents ticked from the list and hooks one a
/// line; a bad value is shown at its field and nothing is saved; then 保存并检测; a deployer
/// reads the form and cannot save it (nor PUT); two editors — the second is refused, naming
/// the first; a ticket deploys it through nginx; a revert to revision 1 runs the old hooks.
#[test]
fn a_project_is_configured_in_the_form_checked_and_deployed() {
    if !require("chromium and chromium-driver, nginx", have_browser() && slipway_tests::have_nginx()) {
        return;
    }
    let fleet = Fleet::new(2);
    let repo = Repo::new(fleet.path().join("repo"));
    repo.write("index.html", "made in the form\n");
    repo.commit("v1");
    slipway_tests::add_admin(&fleet, "ops");
    add_user(&fleet, "mia", &[]);
    add_user(&fleet, "dev", &[]);
    let roots: Vec<_> = ["web-1", "web-2"].iter().map(|h| fleet.current(h, "site")).collect();
    let (_nginx, ports) = slipway_tests::nginx(&fleet.path().join("nginx"), &roots);
    let server = Server::start(&fleet);
    let base = format!("http://127.0.0.1:{}", server.port);
    let hosts_root = fleet.path().join("hosts");
    let driver = Driver::start();
    let user = if slipway_tests::is_root() {
        slipway_tests::ensure_www();
        "www"
    } else {
        ""
    };
    runtime().block_on(async {
        let ops = driver.session("en-US", 1280, 1000).await;
        log_in(&ops, &base, "ops").await;
        click(&ops, "a[href='/projects/new']").await;
        let type_in = |c: &fantoccini::Client, css: &str, text: &str| {
            let (c, css, text) = (c.clone(), css.to_owned(), text.to_owned());
            async move {
                let el = c.find(Locator::Css(&css)).await.unwrap_or_else(|e| panic!("no {css}: {e}"));
                el.clear().await.unwrap();
                el.send_keys(&text).await.unwrap();
            }
        };
        type_in(&ops, "#name", "site").await;
        type_in(&ops, "#repo", repo.path.to_str().unwrap()).await;
        type_in(&ops, "#keep_releases", "many").await;
        type_in(&ops, "#target-user", user).await;
        type_in(&ops, "#target-deploy_to", &format!("{}/{{host}}/site", hosts_root.display())).await;
        type_in(&ops, "#target-current", &format!("{}/{{host}}/www/site", hosts_root.display())).await;
        type_in(&ops, "#target-post_release", "echo first hook\necho second hook").await;
        type_in(&ops, "#new_env", "test").await;
        click(&ops, "input[name='env.+new.host'][value='web-1']").await;
        click(&ops, "input[name='env.+new.host'][value='web-2']").await;
        screenshot(&ops, "project-form-new").await;
        click(&ops, "button[value='save']").await;
        // The bad value is shown at its field, and nothing is saved.
        let field = match ops
            .wait()
            .at_most(std::time::Duration::from_secs(10))
            .for_element(Locator::Css(".field.invalid"))
            .await
        {
            Ok(f) => f,
            Err(e) => panic!("no field marked invalid ({e}): {}", ops.source().await.unwrap()),
        };
        let text = field.text().await.unwrap();
        assert!(text.contains("keep_releases"), "the error at its field: {text}");
        let (status, _) = server.call("GET", "/api/v1/projects/site", &[("Authorization", "x")], None);
        assert_ne!(status, 200);
        assert!(!fleet.slipctl(&["project", "list"]).ok().stdout.contains("site"), "nothing saved");
        let kept = ops.find(Locator::Css("#name")).await.unwrap().prop("value").await.unwrap();
        assert_eq!(kept.as_deref(), Some("site"), "the name typed is shown again with the error");
        // Fixed: saved as revision 1, then saved again and checked (检测 with what was saved).
        type_in(&ops, "#name", "site").await;
        type_in(&ops, "#repo", repo.path.to_str().unwrap()).await;
        type_in(&ops, "#keep_releases", "3").await;
        type_in(&ops, "#target-user", user).await;
        type_in(&ops, "#target-deploy_to", &format!("{}/{{host}}/site", hosts_root.display())).await;
        type_in(&ops, "#target-current", &format!("{}/{{host}}/www/site", hosts_root.display())).await;
        type_in(&ops, "#target-post_release", "echo first hook\necho second hook").await;
        type_in(&ops, "#new_env", "test").await;
        for h in ["web-1", "web-2"] {
            let css = format!("input[name='env.+new.host'][value='{h}']");
            if !ops.find(Locator::Css(&css)).await.unwrap().is_selected().await.unwrap() {
                click(&ops, &css).await;
            }
        }
        click(&ops, "button[value='save']").await;
        let h1 = wait_text(&ops, "h1", "revision 1").await;
        assert!(h1.contains("site"), "{h1}");
        click(&ops, "button[value='save_check']").await;
        let check = ops.wait().for_element(Locator::Css("section.check")).await.unwrap().text().await.unwrap();
        assert!(check.contains("web-1") && check.contains("web-2") && check.contains("passed"), "{check}");
        screenshot(&ops, "project-form").await;
        let doc = fleet.slipctl(&["--output", "json", "project", "show", "site"]).ok().json();
        assert_eq!(doc["hosts"]["test"], serde_json::json!(["web-1", "web-2"]), "{doc}");
        assert_eq!(
            doc["envs"]["test"]["target"]["post_release"],
            serde_json::json!(["echo first hook", "echo second hook"])
        );

        // A deployer reads the form, cannot save it, and a direct PUT is refused.
        fleet.slipctl(&["user", "grant", "dev", "site", "test", "deployer"]).ok();
        fleet.slipctl(&["user", "grant", "mia", "site", "*", "maintainer"]).ok();
        let dev = driver.session("en-US", 1280, 1000).await;
        log_in(&dev, &base, "dev").await;
        dev.goto(&format!("{base}/projects/site/edit")).await.unwrap();
        dev.wait().for_element(Locator::Css("p.readonly")).await.unwrap();
        assert!(!has(&dev, "button[value='save']").await, "a deployer has no save button");
        let (cookie, csrf) = server.login("dev", "dev-password");
        let headers = [("Cookie", cookie.as_str()), ("X-CSRF-Token", csrf.as_str()), ("If-Match", "\"r2\"")];
        assert_eq!(server.call("PUT", "/api/v1/projects/site", &headers, Some("name = \"site\"")).0, 403);
        dev.close().await.unwrap();

        // Two editors on revision 2: mia (in Chinese) saves first; ops's save is refused, naming her.
        let mia = driver.session("zh-CN", 1280, 1000).await;
        log_in(&mia, &base, "mia").await;
        mia.goto(&format!("{base}/projects/site/edit")).await.unwrap();
        ops.goto(&format!("{base}/projects/site/edit")).await.unwrap();
        let legend = mia.find(Locator::Css("fieldset legend")).await.unwrap().text().await.unwrap();
        assert_eq!(legend, "项目", "Chinese labels");
        screenshot(&mia, "project-form-zh").await;
        type_in(&mia, "#target-post_release", "echo mia hook").await;
        click(&mia, "button[value='save']").await;
        wait_text(&mia, "h1", "3").await;
        type_in(&ops, "#target-post_release", "echo ops hook").await;
        click(&ops, "button[value='save']").await;
        let refused = ops.wait().for_element(Locator::Css("div.error")).await.unwrap().text().await.unwrap();
        assert!(refused.contains("changed by mia"), "{refused}");
        // The revisions on the page: who and when, and what each one changed.
        ops.goto(&format!("{base}/projects/site/edit")).await.unwrap();
        let list = ops.find(Locator::Css("ol.revisions")).await.unwrap().text().await.unwrap();
        assert!(list.contains("Revision 3") || list.contains("revision 3"), "{list}");
        assert!(list.contains("mia") && list.contains("ops"), "{list}");
        click(&ops, "li[data-revision='3'] a").await;
        let diff = ops.wait().for_element(Locator::Css("pre.diff")).await.unwrap().text().await.unwrap();
        assert!(diff.contains("mia hook") && diff.contains("first hook"), "{diff}");
        mia.set_window_size(360, 900).await.unwrap();
        mia.goto(&format!("{base}/projects/site/edit")).await.unwrap();
        let overflow =
            mia.execute("return document.documentElement.scrollWidth > window.innerWidth", vec![]).await.unwrap();
        assert_eq!(overflow, false, "no sideways scrolling at 360 px");
        screenshot(&mia, "project-form-phone").await;
        mia.close().await.unwrap();
        ops.close().await.unwrap();
    });

    // A ticket deploys it (mia's hook), nginx serves it; revert to revision 1: the old hooks run.
    let (cookie, csrf) = server.login("dev", "dev-password");
    let headers = [("Cookie", cookie.as_str()), ("X-CSRF-Token", csrf.as_str()), ("Content-Type", "application/json")];
    let deploy = |title: &str| -> u64 {
        let body = serde_json::json!({"project": "site", "env": "test", "title": title}).to_string();
        let (_, t) = server.call("POST", "/api/v1/tickets", &headers, Some(&body));
        let (status, d) = server.call("POST", &format!("/api/v1/tickets/{}/deploy", t["id"]), &headers, Some("{}"));
        assert_eq!(status, 202, "{d}");
        let id = d["deploy"].as_u64().unwrap();
        let mut events = slipway_tests::SseReader::open(
            server.port,
            &format!("/api/v1/deploys/{id}/events"),
            &[("Cookie", cookie.as_str())],
        );
        while events.next_event().is_some() {}
        id
    };
    let id = deploy("from the form");
    let shown = fleet.slipctl(&["show", &id.to_string()]).ok().stdout;
    assert!(shown.contains("mia hook") && shown.contains("project revision 3"), "{shown}");
    for port in &ports {
        assert_eq!(http_get(*port, "/index.html").unwrap().1, "made in the form\n");
    }
    // Revert to revision 1 from the project page (its form's action).
    let (ops_cookie, ops_csrf) = server.login("ops", "ops-password");
    let form = [("Cookie", ops_cookie.as_str()), ("Content-Type", "application/x-www-form-urlencoded")];
    let (status, _, _) = slipway_tests::http(
        server.port,
        "POST",
        "/projects/site/revert",
        &form,
        Some(&format!("csrf_token={ops_csrf}&revision=1")),
    );
    assert_eq!(status, 303);
    let id = deploy("back to revision 1");
    let shown = fleet.slipctl(&["show", &id.to_string()]).ok().stdout;
    assert!(shown.contains("first hook") && shown.contains("second hook"), "{shown}");
    assert!(shown.contains("project revision 4"), "{shown}");
}
