//! A headless Chromium driven over WebDriver, for the dashboard's browser
//! test. The test starts `chromedriver` itself on a free loopback port and
//! speaks the W3C WebDriver protocol to it as JSON over HTTP
//! ([`crate::http`]): the dozen calls a test needs are a few lines each, so
//! no WebDriver crate (and its HTTP and TLS stack) is pulled in.
//!
//! Chromium and chromedriver come from Debian's `chromium` and
//! `chromium-driver` packages (`.ci/run` installs them). When they are
//! missing, [`Browser::start`] fails the test saying how to install them:
//! a browser test never passes without a browser.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::daemon::{Daemon, Options};
use crate::http;
use crate::security::free_port;
use crate::wait::wait_for;

/// The key under which WebDriver names an element.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Finds `name` on the PATH.
fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

/// A browser session: chromedriver, and the Chromium it started.
pub struct Browser {
    driver: Daemon,
    addr: SocketAddr,
    session: String,
    /// Chromium's profile and chromedriver's log.
    _dir: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium session
    /// with a window of `width`×`height`.
    ///
    /// # Panics
    ///
    /// When chromium or chromedriver is not installed, or does not start.
    pub fn start(width: u32, height: u32) -> Browser {
        let missing = "the dashboard's browser test needs headless Chromium from Debian's \
                       packages: apt-get install -y chromium chromium-driver (.ci/run installs \
                       them when missing)";
        let chromedriver = which("chromedriver")
            .unwrap_or_else(|| panic!("chromedriver is not on the PATH: {missing}"));
        let chromium = which("chromium")
            .or_else(|| which("chromium-browser"))
            .unwrap_or_else(|| panic!("chromium is not on the PATH: {missing}"));
        let dir = tempfile::tempdir().expect("cannot make a temporary directory");
        let port = free_port();
        let mut cmd = Command::new(&chromedriver);
        cmd.arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1");
        let options = Options {
            log: dir.path().join("chromedriver.log"),
            stdout_lines: false,
            parent_death_signal: libc::SIGKILL,
            stop_grace: Duration::from_secs(2),
        };
        let mut driver = Daemon::spawn("chromedriver", cmd, options)
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        wait_for(Duration::from_secs(20), "chromedriver to be ready", || {
            if let Ok(Some(status)) = driver.try_status() {
                panic!("chromedriver exited: {status}\n{}", driver.log_tail(20));
            }
            let reply = http::request(addr, "GET", "/status", &[], b"").ok()?;
            let v: Value = serde_json::from_str(&reply.body).ok()?;
            v["value"]["ready"].as_bool().filter(|&r| r)
        });
        let profile = dir.path().join("profile");
        let caps = json!({
            "capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                // The TLS test's certificate comes from a test CA.
                "acceptInsecureCerts": true,
                "goog:chromeOptions": {
                    "binary": chromium,
                    "args": [
                        "--headless=new", "--no-sandbox", "--disable-gpu",
                        "--disable-dev-shm-usage", "--no-first-run",
                        format!("--window-size={width},{height}"),
                        format!("--user-data-dir={}", profile.display()),
                    ],
                },
            }}
        });
        let reply = call(addr, "POST", "/session", Some(&caps)).unwrap_or_else(|e| {
            panic!(
                "chromedriver cannot start Chromium: {e}\n{}",
                driver.log_tail(30)
            )
        });
        let session = reply["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver's new session has no id: {reply}"))
            .to_string();
        Browser {
            driver,
            addr,
            session,
            _dir: dir,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        call(
            self.addr,
            method,
            &format!("/session/{}{path}", self.session),
            body,
        )
    }

    fn must(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        self.call(method, path, body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    /// Loads `url` and waits for it.
    pub fn goto(&self, url: &str) {
        self.must("POST", "/url", Some(&json!({ "url": url })));
    }

    /// The page's URL.
    pub fn url(&self) -> String {
        self.must("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The first element matching the CSS `selector`, if any.
    pub fn find(&self, selector: &str) -> Option<String> {
        let body = json!({ "using": "css selector", "value": selector });
        let v = self.call("POST", "/element", Some(&body)).ok()?;
        v[ELEMENT].as_str().map(str::to_string)
    }

    /// Waits for an element matching `selector` and returns it.
    #[track_caller]
    pub fn wait_find(&self, selector: &str, timeout: Duration) -> String {
        wait_for(timeout, &format!("an element {selector:?}"), || {
            self.find(selector)
        })
    }

    /// Clicks the element matching `selector` (waiting for it).
    #[track_caller]
    pub fn click(&self, selector: &str) {
        let e = self.wait_find(selector, Duration::from_secs(10));
        self.must("POST", &format!("/element/{e}/click"), Some(&json!({})));
    }

    /// Types `text` into the element matching `selector`.
    #[track_caller]
    pub fn type_into(&self, selector: &str, text: &str) {
        let e = self.wait_find(selector, Duration::from_secs(10));
        self.must(
            "POST",
            &format!("/element/{e}/value"),
            Some(&json!({ "text": text })),
        );
    }

    /// The rendered text of the first element matching `selector`.
    pub fn text(&self, selector: &str) -> Option<String> {
        let e = self.find(selector)?;
        let v = self.call("GET", &format!("/element/{e}/text"), None).ok()?;
        v.as_str().map(str::to_string)
    }

    /// Runs `script` (a function body) in the page and returns its value.
    pub fn script(&self, script: &str) -> Value {
        self.must(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": [] })),
        )
    }

    /// Forgets every cookie.
    pub fn delete_cookies(&self) {
        self.must("DELETE", "/cookie", None);
    }

    /// Saves a PNG of the window to `path`, making its directory.
    pub fn screenshot(&self, path: &Path) {
        let v = self.must("GET", "/screenshot", None);
        let png = base64_decode(v.as_str().unwrap_or_default())
            .unwrap_or_else(|| panic!("the screenshot is not base64"));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        }
        std::fs::write(path, png)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }

    /// chromedriver's log, for failures.
    pub fn log_tail(&self) -> String {
        self.driver.log_tail(30)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends Chromium; the daemon's drop then stops chromedriver.
        let _ = self.call("DELETE", "", None);
    }
}

/// One WebDriver call: its `value`, or the error it names.
fn call(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
    let text = body.map(Value::to_string).unwrap_or_default();
    let headers = [("Content-Type", "application/json")];
    let reply =
        http::request(addr, method, path, &headers, text.as_bytes()).map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_str(&reply.body).map_err(|e| format!("{e}: {}", reply.body))?;
    if reply.status != 200 {
        return Err(format!(
            "{} {}: {}",
            reply.status, v["value"]["error"], v["value"]["message"]
        ));
    }
    Ok(v["value"].clone())
}

/// Decodes standard base64 (screenshots).
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let bytes: Vec<u8> = text
        .bytes()
        .filter(|&c| c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= u32::from(value(c)?) << (18 - 6 * i);
        }
        let take = chunk.len().checked_sub(1)?;
        out.extend_from_slice(&n.to_be_bytes()[1..1 + take]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_decodes_padded_and_unpadded() {
        assert_eq!(super::base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(super::base64_decode("aGVsbG8h").unwrap(), b"hello!");
        assert_eq!(super::base64_decode("aA==").unwrap(), b"h");
        assert!(super::base64_decode("a$==").is_none());
    }
}
