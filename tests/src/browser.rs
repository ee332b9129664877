//! A real headless Chromium driven over WebDriver (Debian's `chromium` + `chromium-driver`,
//! through `fantoccini`), for the web pages' tests; screenshots go to `target/screenshots/`.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};

/// A running chromedriver, stopped on drop.
pub struct Driver {
    child: Child,
    pub port: u16,
}

/// Whether chromium and chromedriver are installed.
pub fn have_browser() -> bool {
    ["chromium", "chromedriver"].iter().all(|b| Command::new("which").arg(b).output().is_ok_and(|o| o.status.success()))
}

impl Driver {
    /// Start chromedriver on a port of its choosing. Its browsers live in UTC+8
    /// (`Asia/Shanghai`), so a page that shows times in the viewer's zone can be told from one
    /// that prints the server's UTC.
    pub fn start() -> Driver {
        let mut child = Command::new("chromedriver")
            .arg("--port=0")
            .env("TZ", "Asia/Shanghai")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver");
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let port = loop {
            let line = lines.next().expect("chromedriver exited before it listened").unwrap();
            if let Some(rest) = line.split("started successfully on port ").nth(1) {
                break rest.trim_end_matches('.').trim().parse().expect("a port");
            }
        };
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Driver { child, port }
    }

    /// A new browser session: headless, this window size, this preferred language.
    pub async fn session(&self, lang: &str, width: u32, height: u32) -> fantoccini::Client {
        self.session_with(lang, width, height, &[]).await
    }

    /// The same, with more Chromium arguments.
    pub async fn session_with(&self, lang: &str, width: u32, height: u32, extra: &[&str]) -> fantoccini::Client {
        let mut args: Vec<String> = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
            .iter()
            .map(|a| a.to_string())
            .collect();
        args.extend([format!("--window-size={width},{height}"), format!("--lang={lang}")]);
        args.extend(extra.iter().map(|a| a.to_string()));
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": args,
                "prefs": {"intl.accept_languages": lang},
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        fantoccini::ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a WebDriver session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Save a screenshot of `client`'s page as `target/screenshots/<name>.png`; its path.
pub async fn screenshot(client: &fantoccini::Client, name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.png"));
    std::fs::write(&path, client.screenshot().await.expect("a screenshot")).unwrap();
    path
}
