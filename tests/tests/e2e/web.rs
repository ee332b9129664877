//! The web pages in a real headless Chromium against a real `slipctl serve` and real agents:
//! logging in, the dashboard's grid with what the hosts run, the Chinese locale, a phone-width
//! screen, and logging out (screenshots in `target/screenshots/`).

use fantoccini::Locator;
use slipway_tests::browser::{Driver, have_browser, screenshot};
use slipway_tests::{Fleet, Repo, Server, require};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn log_in_see_the_dashboard_in_english_and_chinese_and_log_out() {
    if !require("chromium and chromium-driver", have_browser()) {
        return;
    }
    let fleet = Fleet::new(2);
    let repo = Repo::new(fleet.path().join("repo"));
    repo.write("index.html", "v1\n");
    repo.commit("v1");
    fleet.apply_project("shop", &repo.path, "");
    let release = fleet.deploy_ok("shop");
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
        c.find(Locator::Css("form button[type=submit]")).await.unwrap().click().await.unwrap();
        let alert = c.wait().for_element(Locator::Css("[role=alert]")).await.unwrap();
        assert!(alert.text().await.unwrap().contains("Wrong user or password"));
        c.find(Locator::Css("#user")).await.unwrap().send_keys("dev").await.unwrap();
        c.find(Locator::Css("#password")).await.unwrap().send_keys("dev-password").await.unwrap();
        c.find(Locator::Css("form button[type=submit]")).await.unwrap().click().await.unwrap();

        // The grid: the cell of (shop, test) says both hosts run the release just deployed.
        let cell = c.wait().for_element(Locator::Css("article.cell[data-project=shop][data-env=test]")).await.unwrap();
        let text = cell.text().await.unwrap();
        assert!(text.contains(&format!("2 on {release}")), "{text}");
        assert!(text.contains("succeeded"), "status in words, not colour alone: {text}");
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
        c.find(Locator::Css("header form[action='/logout'] button")).await.unwrap().click().await.unwrap();
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
        zh.find(Locator::Css("form button[type=submit]")).await.unwrap().click().await.unwrap();
        let cell = zh.wait().for_element(Locator::Css("article.cell")).await.unwrap();
        let text = cell.text().await.unwrap();
        assert!(text.contains("主机上的版本") && text.contains("成功"), "{text}");
        screenshot(&zh, "dashboard-zh").await;
        zh.find(Locator::Css("a.lang")).await.unwrap().click().await.unwrap();
        let h1 = zh.wait().for_element(Locator::Css("main h1")).await.unwrap();
        assert_eq!(h1.text().await.unwrap(), "Dashboard");
        zh.close().await.unwrap();
    });
}
