//! The web dashboard (`--dashboard-listen`), against a real master and
//! real workers: first over plain HTTP (who may see what, what a GET may
//! not do, the checks on every action, pagination, the event stream, the
//! size of a page), then in a real headless Chromium driven over
//! WebDriver, which watches a batch finish, retries a failed job and sees
//! it succeed, and saves screenshots under `target/dashboard/`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use drover_common::net::ClientOptions;
use drover_common::pb::{self, JobKind, JobState};
use drover_tests::grpc::{block_on, job};
use drover_tests::http::{self, Reply};
use drover_tests::security::{Pki, free_port, options, queue, stats};
use drover_tests::webdriver::Browser;
use drover_tests::{Master, Worker, wait_for, wait_until};

const TOKEN: &str = "dashboard-test-client-token";
const WAIT: Duration = Duration::from_secs(30);

/// A master with a client token and its dashboard on a free port.
struct Setup {
    master: Master,
    dash: SocketAddr,
    opts: ClientOptions,
}

impl Setup {
    fn start(extra: &[&str]) -> Setup {
        let dash: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let listen = dash.to_string();
        // The redb store (in the harness's temporary data directory), so
        // commit latency is real.
        let mut args = vec!["--metrics-listen", "off", "--dashboard-listen", &listen];
        args.extend_from_slice(extra);
        let master = Master::start(&args);
        let opts = options(
            None,
            None,
            extra.contains(&"--client-token").then_some(TOKEN),
        );
        Setup { master, dash, opts }
    }

    /// Starts a worker and waits until the master lists it.
    fn worker(&self, args: &[&str]) -> Worker {
        let w = Worker::spawn(&self.master.url(), args);
        let pid = w.pid();
        wait_until(WAIT, "the worker to register", || {
            self.stats().workers.iter().any(|i| i.pid == pid)
        });
        w
    }

    fn stats(&self) -> pb::StatsResponse {
        stats(&self.master.url(), &self.opts)
    }

    fn submit(&self, jobs: Vec<pb::JobSpec>) -> pb::SubmitResponse {
        block_on(
            queue(&self.master.url(), &self.opts).submit(pb::SubmitRequest {
                jobs,
                ..Default::default()
            }),
        )
        .expect("submit")
        .into_inner()
    }

    fn job(&self, id: &str) -> pb::JobInfo {
        let req = pb::GetRequest {
            job_ids: vec![id.to_string()],
            ..Default::default()
        };
        block_on(queue(&self.master.url(), &self.opts).get(req))
            .expect("get")
            .into_inner()
            .jobs
            .remove(0)
    }

    fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        http::request(self.dash, "GET", path, headers, b"").expect("GET")
    }

    fn post(&self, path: &str, headers: &[(&str, &str)], form: &str) -> Reply {
        let mut h = vec![("Content-Type", "application/x-www-form-urlencoded")];
        h.extend_from_slice(headers);
        http::request(self.dash, "POST", path, &h, form.as_bytes()).expect("POST")
    }

    fn origin(&self) -> String {
        format!("http://{}", self.dash)
    }
}

/// A sleep job that runs `ms` and fails once past `timeout_ms`.
fn sleep(ms: u64, timeout_ms: u64, max_attempts: u32) -> pb::JobSpec {
    pb::JobSpec {
        timeout_ms,
        max_attempts,
        ..job(JobKind::Sleep, ms)
    }
}

/// The queue's counts, to show that something did not change them.
fn counts(s: &pb::StatsResponse) -> [u64; 5] {
    [s.queued, s.running, s.succeeded, s.failed, s.cancelled]
}

/// Every `href="..."` and `action=...` of a page.
fn links(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    for marker in ["href=\"", "action="] {
        for part in html.split(marker).skip(1) {
            let end = part.find(['"', ' ', '>']).unwrap_or(part.len());
            out.push(part[..end].replace("&amp;", "&"));
        }
    }
    out
}

/// The CSRF token a page's forms carry.
fn csrf(html: &str) -> String {
    let part = html
        .split("name=csrf value=\"")
        .nth(1)
        .expect("the page has a form with a csrf field");
    part[..part.find('"').unwrap()].to_string()
}

#[test]
fn who_sees_what_and_what_a_request_may_change() {
    let s = Setup::start(&["--client-token", TOKEN]);
    let _w = s.worker(&["--processes", "1"]);
    let bad = s.submit(vec![sleep(2000, 20, 1)]);
    let bad_id = bad.job_ids[0].clone();
    let batch = s.submit((1..=120).map(|n| job(JobKind::Fib, n)).collect());
    wait_until(WAIT, "the jobs to finish", || {
        let st = s.stats();
        st.succeeded == 120 && st.failed == 1
    });
    let failed = s.job(&bad_id);
    let reason = failed.attempt_errors[0].clone();

    // No credentials: pages send to the login form, data is refused.
    let r = s.get("/", &[]);
    assert_eq!((r.status, r.header("location")), (303, Some("/login")));
    for path in ["/api/summary", "/events"] {
        let r = s.get(path, &[]);
        assert_eq!(r.status, 401, "{path}: {}", r.body);
    }
    // A wrong token sees no data either.
    let wrong = [("Authorization", "Bearer not-the-token")];
    let r = s.get("/api/summary", &wrong);
    assert_eq!(r.status, 401);
    assert!(r.body.contains("wrong token"), "{}", r.body);
    let r = s.get(&format!("/jobs/{bad_id}"), &wrong);
    assert_eq!(r.status, 303);
    assert!(!r.body.contains(&bad_id));
    let r = s.post("/login", &[("Origin", &s.origin())], "token=not-the-token");
    assert_eq!(r.status, 401);
    assert!(r.header("set-cookie").is_none());
    assert!(r.body.contains("wrong token"), "{}", r.body);

    // The token in the header, and the login cookie.
    let bearer = format!("Bearer {TOKEN}");
    let r = s.get("/api/summary", &[("Authorization", &bearer)]);
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        (v["succeeded"].as_u64(), v["failed"].as_u64()),
        (Some(120), Some(1))
    );
    let r = s.post(
        "/login",
        &[("Origin", &s.origin())],
        &format!("token={TOKEN}"),
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let set = r
        .header("set-cookie")
        .expect("a login sets a cookie")
        .to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(
        !set.contains(TOKEN),
        "the cookie holds the token itself: {set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();
    let me = [("Cookie", cookie.as_str())];

    // The failed job with its reason, and its page.
    let page = s.get("/jobs?state=failed", &me);
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains(&format!("data-retry=\"{bad_id}\"")),
        "{}",
        page.body
    );
    assert!(
        page.body.contains(&reason),
        "the reason {reason:?} is not shown"
    );
    let r = s.get(&format!("/jobs/{bad_id}"), &me);
    assert_eq!(r.status, 200);
    assert!(r.body.contains("id=job-state>failed<"), "{}", r.body);
    let token = csrf(&page.body);

    // Pages: never more than a page of jobs, with a clear error for bad
    // filters.
    let b = &batch.batch_id;
    let r = s.get(&format!("/jobs?batch={b}"), &me);
    assert_eq!(r.body.matches("<tr data-job=").count(), 50);
    assert!(r.body.contains("jobs 1–50 of 120"), "{}", r.body);
    let r = s.get(&format!("/jobs?batch={b}&page=3"), &me);
    assert_eq!(r.body.matches("<tr data-job=").count(), 20);
    assert!(r.body.contains("jobs 101–120 of 120"), "{}", r.body);
    let r = s.get("/jobs?kind=fib&state=succeeded&page=2", &me);
    assert_eq!(r.body.matches("<tr data-job=").count(), 50);
    for (path, field) in [
        ("/jobs?page=0", "page"),
        ("/jobs?state=done", "state"),
        ("/jobs?kind=sort", "kind"),
        ("/jobs?batch=nope", "batch"),
        ("/batches?page=x", "page"),
    ] {
        let r = s.get(path, &me);
        assert_eq!(r.status, 400, "{path}");
        assert!(r.body.starts_with(field), "{path}: {}", r.body);
    }

    // A page with its assets stays under 100 KB.
    let size: usize = ["/", "/assets/style.css", "/assets/app.js"]
        .iter()
        .map(|p| s.get(p, &me).body.len())
        .sum();
    assert!(
        size < 100 * 1024,
        "the overview with its assets is {size} bytes"
    );
    let r = s.get(&format!("/jobs?batch={b}"), &me);
    assert!(
        r.body.len() < 100 * 1024,
        "a page of jobs is {} bytes",
        r.body.len()
    );

    // A GET never changes anything: every link and form action of every
    // page, the actions with their fields in the query.
    let before = counts(&s.stats());
    let mut urls = Vec::new();
    for p in [
        "/".to_string(),
        "/workers".into(),
        "/batches".into(),
        "/jobs?state=failed".into(),
        format!("/jobs?batch={b}"),
        format!("/jobs/{bad_id}"),
    ] {
        urls.extend(links(&s.get(&p, &me).body));
    }
    urls.push(format!("/actions/retry?job={bad_id}&csrf={token}"));
    urls.push(format!("/actions/retry?all=failed&csrf={token}"));
    urls.push(format!("/actions/cancel?batch={b}&csrf={token}"));
    urls.sort();
    urls.dedup();
    assert!(urls.iter().any(|u| u == "/actions/retry"), "{urls:?}");
    for u in urls.iter().filter(|u| u.starts_with('/')) {
        let r = s.get(u, &me);
        if u.starts_with("/actions/") || u == "/logout" {
            assert_eq!(r.status, 405, "GET {u} answered {}", r.status);
        }
    }
    assert_eq!(counts(&s.stats()), before, "a GET changed the queue");
    assert_eq!(s.job(&bad_id).attempts, 1);

    // An action needs the CSRF token and the dashboard's own origin.
    let form = format!("job={bad_id}&back=/jobs");
    let r = s.post("/actions/retry", &[me[0], ("Origin", &s.origin())], &form);
    assert_eq!(r.status, 403, "{}", r.body);
    let with_csrf = format!("{form}&csrf={token}");
    let r = s.post(
        "/actions/retry",
        &[me[0], ("Origin", "http://evil.example")],
        &with_csrf,
    );
    assert_eq!(r.status, 403, "{}", r.body);
    let r = s.post("/actions/retry", &[("Origin", &s.origin())], &with_csrf);
    assert_eq!(r.status, 401, "an action without the cookie: {}", r.body);
    assert_eq!(
        s.job(&bad_id).attempts,
        1,
        "a refused action retried the job"
    );
    let r = s.post(
        "/actions/retry",
        &[me[0], ("Origin", &s.origin())],
        &with_csrf,
    );
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(
        r.header("location"),
        Some("/jobs?notice=retried%201%20failed%20job")
    );
    wait_until(WAIT, "the retried job to fail again", || {
        let j = s.job(&bad_id);
        j.attempts == 2 && j.state == JobState::Failed as i32
    });
    // A script sends the token in the header and needs no CSRF token.
    let r = s.post(
        "/actions/retry",
        &[("Authorization", &bearer)],
        // A page to go back to that would split the header is not followed.
        "all=failed&back=/jobs%0d%0aSet-Cookie:%20x=1",
    );
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(
        r.header("location"),
        Some("/?notice=retried%201%20failed%20job")
    );
    assert!(r.header("set-cookie").is_none());
    wait_until(WAIT, "the job's third attempt", || {
        s.job(&bad_id).attempts == 3
    });

    // The event stream sends the live figures.
    let events = http::read_for(s.dash, "/events", &me, Duration::from_millis(1500)).unwrap();
    assert!(events.contains("text/event-stream"), "{events}");
    assert!(events.contains("event: snapshot"), "{events}");
    assert!(events.contains("\"succeeded\":120"), "{events}");
}

#[test]
fn an_open_dashboard_answers_only_its_own_host_and_is_kept_on_loopback() {
    let s = Setup::start(&[]);
    assert_eq!(s.get("/api/summary", &[]).status, 200);
    let r = s.get("/", &[("Host", "rebound.example:9466")]);
    assert_eq!(r.status, 421, "{}", r.body);
    let r = s.get("/", &[("Host", &format!("localhost:{}", s.dash.port()))]);
    assert_eq!(r.status, 200);
    // Open, an action still needs the page's CSRF token.
    let r = s.post("/actions/retry", &[("Origin", &s.origin())], "all=failed");
    assert_eq!(r.status, 403, "{}", r.body);

    let out = std::process::Command::new(drover_tests::bins::bin("drover-master"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--store",
            "memory",
            "--metrics-listen",
            "off",
        ])
        .args(["--dashboard-listen", "0.0.0.0:0"])
        .env_remove("DROVER_CLIENT_TOKEN")
        .output()
        .expect("run drover-master");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("refusing to serve the dashboard") && err.contains("--client-token"),
        "{err}"
    );
}

/// Where the screenshots go, for a person to look at.
fn shots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard")
}

#[test]
fn in_a_browser_a_batch_finishes_and_a_failed_job_is_retried() {
    let s = Setup::start(&["--client-token", TOKEN]);
    let url = |path: &str| format!("http://{}{path}", s.dash);
    let browser = Browser::start(1280, 860);

    // A job whose worker dies under it fails (one attempt allowed); with a
    // worker that stays, a retry runs it to the end.
    let doomed = s.worker(&["--processes", "1"]);
    let lost = s.submit(vec![sleep(1500, 0, 1)]).job_ids.remove(0);
    wait_until(WAIT, "the sleep job to run", || {
        s.job(&lost).state == JobState::Running as i32
    });
    doomed.kill9();
    wait_until(WAIT, "the job to fail with its worker", || {
        s.job(&lost).state == JobState::Failed as i32
    });
    let reason = s.job(&lost).attempt_errors[0].clone();
    let _w = s.worker(&["--processes", "1", "--io-slots", "3"]);

    // Log in through the form.
    browser.goto(&url("/"));
    wait_until(WAIT, "the login page", || browser.url().ends_with("/login"));
    browser.type_into("input[name=token]", TOKEN);
    browser.click(".login button");
    wait_until(WAIT, "the overview", || {
        browser.text("h1").as_deref() == Some("Overview")
    });

    // A batch's progress, live, until done.
    browser.goto(&url("/batches"));
    let batch = s
        .submit((0..24).map(|_| sleep(300, 0, 3)).collect())
        .batch_id;
    let row = format!("tr[data-batch=\"{batch}\"]");
    browser.wait_find(&row, WAIT);
    let mut seen_running = false;
    wait_until(WAIT, "the batch to be done on the page", || {
        let done = browser.text(&format!("{row} .done")).unwrap_or_default();
        if !seen_running && done != "24/24" && done != "0/24" {
            seen_running = true;
            browser.screenshot(&shots().join("batch-running.png"));
        }
        done == "24/24" && browser.text(&format!("{row} .remaining")).as_deref() == Some("done")
    });
    browser.screenshot(&shots().join("batches.png"));
    let st = s.stats();
    assert_eq!(st.succeeded, 24, "{st:?}");

    // The failed job, with its reason; Retry, and it succeeds.
    browser.goto(&url("/jobs?state=failed"));
    let retry = format!("button[data-retry=\"{lost}\"]");
    browser.wait_find(&retry, WAIT);
    let row_text = browser.text(&format!("tr[data-job=\"{lost}\"]")).unwrap();
    assert!(row_text.contains(&reason), "{row_text:?} lacks {reason:?}");
    browser.screenshot(&shots().join("failed.png"));
    browser.click(&retry);
    wait_until(WAIT, "the retry's notice", || {
        browser.text(".notice").as_deref() == Some("retried 1 failed job")
    });
    browser.goto(&url(&format!("/jobs/{lost}")));
    wait_until(WAIT, "the job page to show it succeeded (live)", || {
        browser.text("#job-state").as_deref() == Some("succeeded")
    });
    assert_eq!(
        browser.text("#job-result").as_deref(),
        Some("slept 1500 ms")
    );
    let page = browser.text("main").unwrap();
    assert!(
        page.contains(&reason),
        "the job page lacks the first attempt's reason"
    );
    assert_eq!(s.job(&lost).state, JobState::Succeeded as i32);
    browser.screenshot(&shots().join("job.png"));

    // The overview agrees with the master.
    browser.goto(&url("/"));
    wait_until(WAIT, "the live marker", || {
        browser.text("#live").as_deref() == Some("live")
    });
    let want = s.stats().succeeded.to_string();
    wait_for(WAIT, "the overview's succeeded count", || {
        (browser.text("[data-k=succeeded]")? == want).then_some(())
    });
    browser.screenshot(&shots().join("overview.png"));

    // Without the cookie, and with a wrong token, no data.
    browser.delete_cookies();
    browser.goto(&url(&format!("/jobs/{lost}")));
    wait_until(WAIT, "the login page", || browser.url().ends_with("/login"));
    browser.type_into("input[name=token]", "not-the-token");
    browser.click(".login button");
    wait_until(WAIT, "the refusal", || {
        browser.text(".error").as_deref()
            == Some("wrong token: it is not this master's client token")
    });
    let html = browser.script("return document.documentElement.outerHTML;");
    assert!(
        !html.as_str().unwrap().contains(&lost),
        "a wrong token saw the job"
    );
    browser.screenshot(&shots().join("wrong-token.png"));
    let _ = browser.log_tail();
}

#[test]
fn with_a_certificate_the_dashboard_speaks_only_https() {
    let pki = Pki::new();
    let (cert, key) = (pki.arg("server.pem"), pki.arg("server.key"));
    let s = Setup::start(&[
        "--client-token",
        TOKEN,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ]);
    let plain = http::request(s.dash, "GET", "/login", &[], b"");
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");

    let browser = Browser::start(1024, 700);
    let url = |path: &str| format!("https://127.0.0.1:{}{path}", s.dash.port());
    browser.goto(&url("/jobs"));
    wait_until(WAIT, "the login page", || browser.url().ends_with("/login"));
    browser.type_into("input[name=token]", TOKEN);
    browser.click(".login button");
    wait_until(WAIT, "the overview over https", || {
        browser.text("h1").as_deref() == Some("Overview")
    });
    assert!(browser.url().starts_with("https://"), "{}", browser.url());
}
