//! The HTML of each page. Everything shown is escaped; long values (a
//! prime's digits, F(n)'s million digits) are shortened on screen with a
//! note saying so, never silently.

use std::collections::HashMap;
use std::fmt::Write as _;

use axum::http::Uri;
use drover_common::job::{kind_name, state_name};
use drover_common::pb::{self, JobState, job_output};

use super::access::Access;
use super::{Snapshot, field, pairs};
use crate::state::{BatchSummary, JobFilter};

/// A page: its title, which tab it is, its `<main>` and how it is kept
/// fresh.
pub(crate) struct Page {
    title: String,
    tab: &'static str,
    /// The content of `<main>`.
    pub(crate) body: String,
    /// How the script refreshes `<main>`: `counts` (when the job counts
    /// change), `always` (once a second) or `none`.
    live: &'static str,
}

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query value.
fn q(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// At most `max` characters of `s`; a longer one is cut in the middle with
/// a note of how long it is.
fn shorten(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return esc(s);
    }
    let head: String = s.chars().take(max / 2).collect();
    let tail: String = s.chars().skip(n - max / 2).collect();
    format!(
        "{}<span class=cut>…({} characters in all)…</span>{}",
        esc(&head),
        n,
        esc(&tail)
    )
}

/// A short form of an id: its last 8 characters (the first ones of a
/// UUID v7 are its time, alike for ids made together).
fn short(id: &str) -> String {
    let tail: String = id
        .chars()
        .rev()
        .take(8)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("…{}", esc(&tail))
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A duration in seconds, short: `42 s`, `3 min 5 s`, `2 h 10 min`.
fn span(s: u64) -> String {
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

/// The whole document around a page.
pub(crate) fn document(p: &Page, uri: &Uri, access: &Access) -> String {
    let query = pairs(uri.query().unwrap_or(""));
    let notice = field(&query, "notice")
        .map(|n| format!("<p class=notice role=status>{}</p>", esc(n)))
        .unwrap_or_default();
    let mut nav = String::new();
    for (tab, href, label) in [
        ("overview", "/", "Overview"),
        ("workers", "/workers", "Workers"),
        ("batches", "/batches", "Batches"),
        ("jobs", "/jobs", "Jobs"),
        ("failed", "/jobs?state=failed", "Failed"),
    ] {
        let current = if tab == p.tab {
            " aria-current=page"
        } else {
            ""
        };
        let badge = if tab == "failed" {
            " <span class=badge data-k=failed></span>"
        } else {
            ""
        };
        let _ = write!(nav, "<a href=\"{href}\"{current}>{label}{badge}</a>");
    }
    if access.needs_login() {
        let _ = write!(
            nav,
            "<form method=post action=/logout class=logout><input type=hidden name=csrf value=\"{}\"><button>Log out</button></form>",
            access.csrf()
        );
    }
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width,initial-scale=1\">\
         <title>{title} · drover</title><link rel=stylesheet href=/assets/style.css>\
         <script src=/assets/app.js defer></script></head>\
         <body><header><b class=brand>drover</b><nav>{nav}</nav>\
         <span class=live id=live title=\"live updates\">offline</span></header>\
         {notice}<main id=main data-live={live}>{body}</main></body></html>",
        title = esc(&p.title),
        live = p.live,
        body = p.body,
    )
}

/// The login form.
pub(crate) fn login(error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=error role=alert>{}</p>", esc(e)))
        .unwrap_or_default();
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>Log in · drover</title>\
         <link rel=stylesheet href=/assets/style.css></head><body><header><b class=brand>drover</b></header>\
         <main><h1>Log in</h1>{error}<form method=post action=/login class=login>\
         <label>Client token <input type=password name=token autocomplete=current-password autofocus required></label>\
         <button>Log in</button></form>\
         <p class=hint>The master's client token (<code>--client-token</code>). \
         Scripts may send <code>Authorization: Bearer &lt;token&gt;</code> instead.</p></main></body></html>"
    )
}

/// A one-button form posting an action.
fn action(access: &Access, verb: &str, name: &str, value: &str, label: &str, back: &str) -> String {
    format!(
        "<form method=post action=/actions/{verb} class=act>\
         <input type=hidden name=csrf value=\"{}\">\
         <input type=hidden name={name} value=\"{}\">\
         <input type=hidden name=back value=\"{}\">\
         <button class={verb} data-{verb}=\"{}\">{label}</button></form>",
        access.csrf(),
        esc(value),
        esc(back),
        esc(value)
    )
}

fn card(label: &str, key: &str, value: &str) -> String {
    format!("<div class=card><span>{label}</span><b data-k={key}>{value}</b></div>")
}

fn ms(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.2} ms"))
}

/// The throughput chart: jobs finished per second, as an inline SVG the
/// script redraws from each snapshot.
fn chart(series: &[u64]) -> String {
    let max = series.iter().copied().max().unwrap_or(0).max(1);
    let mut points = String::new();
    for (i, v) in series.iter().enumerate() {
        let y = 100.0 - (*v as f64 / max as f64) * 95.0;
        let _ = write!(points, "{i},{y:.1} ");
    }
    format!(
        "<figure class=chart><figcaption>Jobs finished per second, last {} minutes \
         (peak <b data-k=chart_max>{max}</b>/s)</figcaption>\
         <svg viewBox=\"0 0 {} 100\" preserveAspectRatio=none role=img aria-label=\"jobs per second\">\
         <polyline id=series fill=none points=\"{}\"/></svg></figure>",
        series.len() / 60,
        series.len().saturating_sub(1),
        points.trim_end()
    )
}

/// The overview: counts by state, throughput, workers, commit latency,
/// uptime and version.
pub(crate) fn overview(s: &Snapshot) -> Page {
    let mut body = String::from("<h1>Overview</h1><section class=cards>");
    for (label, key, v) in [
        ("Queued", "queued", s.queued),
        ("Running", "running", s.running),
        ("Succeeded", "succeeded", s.succeeded),
        ("Failed", "failed", s.failed),
        ("Cancelled", "cancelled", s.cancelled),
    ] {
        body += &card(label, key, &v.to_string());
    }
    body += "</section><section class=cards>";
    body += &card(
        "Jobs/s (10 s)",
        "jobs_per_s",
        &format!("{:.1}", s.jobs_per_s),
    );
    body += &card("Workers", "workers", &s.workers.to_string());
    body += &card(
        "Busy / slots",
        "busy_slots",
        &format!("{} / {}", s.busy, s.slots),
    );
    body += &card("Commit mean", "commit_mean_ms", &ms(s.commit_mean_ms));
    body += &card("Commit p99 ≤", "commit_p99_ms", &ms(s.commit_p99_ms));
    body += &card("Uptime", "uptime", &span(s.uptime_s));
    body += &card("Version", "version", &esc(&s.version));
    if s.leader_epoch > 0 {
        body += &card("Leader epoch", "leader_epoch", &s.leader_epoch.to_string());
    }
    body += "</section>";
    body += &chart(&s.series);
    Page {
        title: "Overview".into(),
        tab: "overview",
        body,
        live: "none",
    }
}

/// The workers, with their slots, load and last heartbeat.
pub(crate) fn workers(list: &[pb::WorkerInfo], beats: &HashMap<String, u64>) -> Page {
    let mut body = format!(
        "<h1>Workers <small>{}</small></h1><table><thead><tr><th>Name</th><th>Host</th>\
         <th>Slots (cpu/io)</th><th>Busy</th><th>Completed</th><th>Restarts</th>\
         <th>Last heartbeat</th><th>Connected</th><th>Version</th><th>Draining</th></tr></thead><tbody>",
        list.len()
    );
    for w in list {
        let beat = beats.get(&w.worker_id).map_or("–".into(), |ms| {
            format!("{:.1} s ago", *ms as f64 / 1000.0)
        });
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}/{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{beat}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&w.name),
            esc(&w.host),
            w.cpu_slots,
            w.io_slots,
            w.running,
            w.completed,
            w.children_restarted,
            span(w.connected_s),
            esc(&w.version),
            if w.draining { "draining" } else { "no" },
        );
    }
    if list.is_empty() {
        body += "<tr><td colspan=10 class=empty>No worker is connected.</td></tr>";
    }
    body += "</tbody></table><p class=hint>Every worker runs every job kind (fib, prime, sleep); \
             workers report no other capabilities.</p>";
    Page {
        title: "Workers".into(),
        tab: "workers",
        body,
        live: "always",
    }
}

/// Which page of how many, and the links between them.
pub(crate) struct Pager {
    page: usize,
    per: usize,
    total: usize,
}

impl Pager {
    pub(crate) fn new(page: usize, per: usize, total: usize) -> Pager {
        Pager { page, per, total }
    }

    /// `first–last of total` and the links to the pages around, keeping
    /// the filters of `params`.
    fn links(&self, path: &str, params: &[(&str, String)], noun: &str) -> String {
        let first = (self.page - 1) * self.per;
        let last = (first + self.per).min(self.total);
        let pages = self.total.div_ceil(self.per).max(1);
        let href = |n: usize| {
            let mut h = format!("{path}?page={n}");
            for (k, v) in params.iter().filter(|(_, v)| !v.is_empty()) {
                let _ = write!(h, "&{k}={}", q(v));
            }
            esc(&h)
        };
        let mut out = String::from("<nav class=pager>");
        if self.total == 0 {
            let _ = write!(out, "<span>no {noun}</span>");
        } else {
            let _ = write!(
                out,
                "<span>{noun} {}–{last} of {} (page {} of {pages})</span>",
                (first + 1).min(last),
                self.total,
                self.page
            );
        }
        if self.page > 1 {
            let _ = write!(
                out,
                " <a rel=prev href=\"{}\">← newer</a>",
                href(self.page - 1)
            );
        }
        if self.page < pages {
            let _ = write!(
                out,
                " <a rel=next href=\"{}\">older →</a>",
                href(self.page + 1)
            );
        }
        out + "</nav>"
    }
}

/// The stacked progress bar of a batch's jobs.
fn progress(counts: &[u64; 6], total: u64) -> String {
    let pct = |n: u64| {
        if total == 0 {
            0.0
        } else {
            n as f64 * 100.0 / total as f64
        }
    };
    let done = counts[JobState::Succeeded as usize]
        + counts[JobState::Failed as usize]
        + counts[JobState::Cancelled as usize];
    let mut bar = format!(
        "<div class=bar role=progressbar aria-valuemin=0 aria-valuemax={total} aria-valuenow={done}>"
    );
    for state in [
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
        JobState::Running,
    ] {
        let n = counts[state as usize];
        if n > 0 {
            let _ = write!(
                bar,
                "<span class={} style=\"width:{:.2}%\"></span>",
                state_name(state as i32),
                pct(n)
            );
        }
    }
    bar + "</div>"
}

/// The batches, newest first: progress, counts, rate and time remaining.
pub(crate) fn batches(list: &[BatchSummary], pager: Pager, access: &Access) -> Page {
    let now = crate::store::now_ms();
    let mut body = String::from(
        "<h1>Batches</h1><table class=batches><thead><tr><th>Batch</th><th>Submitted</th>\
         <th>Progress</th><th>Done</th><th>Queued</th><th>Running</th><th>Succeeded</th>\
         <th>Failed</th><th>Cancelled</th><th>Rate</th><th>Remaining</th><th></th></tr></thead><tbody>",
    );
    for b in list {
        let c = &b.counts;
        let done = c[JobState::Succeeded as usize]
            + c[JobState::Failed as usize]
            + c[JobState::Cancelled as usize];
        let left = b.total - done.min(b.total);
        // The mean rate since submit: up to now while jobs remain, up to
        // the last finish once done.
        let until = if left == 0 { b.last_finished_ms } else { now };
        let secs = until.saturating_sub(b.submitted_ms) as f64 / 1000.0;
        let rate = (secs > 0.0 && done > 0).then(|| done as f64 / secs);
        let remaining = match (left, rate) {
            (0, _) => "done".to_string(),
            (_, Some(r)) => span((left as f64 / r).ceil() as u64),
            (_, None) => "–".to_string(),
        };
        let id = b.id.to_string();
        let back = "/batches";
        let mut acts = String::new();
        if c[JobState::Failed as usize] > 0 {
            acts += &action(access, "retry", "batch", &id, "Retry failed", back);
        }
        if left > 0 {
            acts += &action(access, "cancel", "batch", &id, "Cancel", back);
        }
        let _ = write!(
            body,
            "<tr data-batch=\"{id}\"><td><a href=\"/jobs?batch={id}\" class=id>{short}</a></td>\
             <td>{submitted}</td><td>{bar}</td><td class=done>{done}/{total}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{rate}</td><td class=remaining>{remaining}</td><td class=acts>{acts}</td></tr>",
            c[JobState::Queued as usize],
            c[JobState::Running as usize],
            c[JobState::Succeeded as usize],
            c[JobState::Failed as usize],
            c[JobState::Cancelled as usize],
            short = short(&id),
            submitted = utc(b.submitted_ms),
            bar = progress(c, b.total),
            total = b.total,
            rate = rate.map_or("–".into(), |r| format!("{r:.1}/s")),
        );
    }
    if list.is_empty() {
        body += "<tr><td colspan=12 class=empty>No batch.</td></tr>";
    }
    body += "</tbody></table>";
    body += &pager.links("/batches", &[], "batches");
    Page {
        title: "Batches".into(),
        tab: "batches",
        body,
        live: "counts",
    }
}

/// A job's attempt reasons, oldest first.
fn attempts_list(info: &pb::JobInfo) -> String {
    if info.attempt_errors.is_empty() {
        return String::new();
    }
    let mut out = String::from("<ol class=attempts>");
    for e in &info.attempt_errors {
        let _ = write!(out, "<li>{}</li>", shorten(e, 400));
    }
    out + "</ol>"
}

/// The actions a job offers in its state.
fn job_actions(info: &pb::JobInfo, access: &Access, back: &str) -> String {
    match JobState::try_from(info.state) {
        Ok(JobState::Failed) => action(access, "retry", "job", &info.job_id, "Retry", back),
        Ok(JobState::Queued | JobState::Running) => {
            action(access, "cancel", "job", &info.job_id, "Cancel", back)
        }
        _ => String::new(),
    }
}

/// A page of jobs, filtered by state, kind and batch.
pub(crate) fn jobs(
    filter: &JobFilter,
    list: &[pb::JobInfo],
    pager: Pager,
    access: &Access,
) -> Page {
    let state = match filter.state {
        JobState::Unspecified => "all",
        s => state_name(s as i32),
    };
    let kind = match filter.kind {
        pb::JobKind::Unspecified => "",
        k => kind_name(k as i32),
    };
    let batch = filter.batch.map(|b| b.to_string()).unwrap_or_default();
    let params = [
        (
            "state",
            if state == "all" {
                String::new()
            } else {
                state.to_string()
            },
        ),
        ("kind", kind.to_string()),
        ("batch", batch.clone()),
    ];
    let mut back = format!("/jobs?page={}", pager.page);
    for (k, v) in params.iter().filter(|(_, v)| !v.is_empty()) {
        let _ = write!(back, "&{k}={}", q(v));
    }
    let failed_view = filter.state == JobState::Failed;
    let title = if failed_view { "Failed jobs" } else { "Jobs" };
    let mut body = format!(
        "<h1>{title}</h1><form method=get action=/jobs class=filters><label>State <select name=state>"
    );
    for s in [
        "all",
        "queued",
        "running",
        "succeeded",
        "failed",
        "cancelled",
    ] {
        let sel = if s == state { " selected" } else { "" };
        let _ = write!(body, "<option{sel}>{s}</option>");
    }
    body += "</select></label><label>Kind <select name=kind><option value=\"\">all</option>";
    for k in ["fib", "prime", "sleep"] {
        let sel = if k == kind { " selected" } else { "" };
        let _ = write!(body, "<option{sel}>{k}</option>");
    }
    let _ = write!(
        body,
        "</select></label><label>Batch <input name=batch size=38 value=\"{}\" placeholder=\"batch id\"></label>\
         <button>Filter</button></form><div class=bulk>",
        esc(&batch)
    );
    if failed_view && filter.batch.is_none() {
        body += &action(
            access,
            "retry",
            "all",
            "failed",
            "Retry every failed job",
            &back,
        );
    }
    if let Some(b) = &filter.batch {
        let id = b.to_string();
        body += &action(
            access,
            "retry",
            "batch",
            &id,
            "Retry this batch's failed jobs",
            &back,
        );
        body += &action(access, "cancel", "batch", &id, "Cancel this batch", &back);
    }
    body += "</div><table class=jobs><thead><tr><th>Job</th><th>Batch</th><th>#</th><th>Kind</th>\
             <th>Arg</th><th>State</th><th>Attempts</th><th>Worker</th><th>Reasons</th><th></th></tr></thead><tbody>";
    for j in list {
        let reasons = if j.attempt_errors.is_empty() {
            shorten(&j.error, 200)
        } else {
            attempts_list(j)
        };
        let _ = write!(
            body,
            "<tr data-job=\"{id}\"><td><a href=\"/jobs/{id}\" class=id>{short}</a></td>\
             <td><a href=\"/jobs?batch={b}\" class=id>{bshort}</a></td><td>{}</td><td>{}</td>\
             <td class=arg>{}</td><td class=\"state {st}\">{st}</td><td>{}/{}</td><td>{}</td><td>{reasons}</td><td class=acts>{}</td></tr>",
            j.index,
            kind_name(j.kind),
            shorten(&j.arg, 40),
            j.counted_attempts,
            j.max_attempts,
            esc(&j.worker),
            job_actions(j, access, &back),
            id = esc(&j.job_id),
            short = short(&j.job_id),
            b = esc(&j.batch_id),
            bshort = short(&j.batch_id),
            st = state_name(j.state),
        );
    }
    if list.is_empty() {
        body += "<tr><td colspan=10 class=empty>No job matches.</td></tr>";
    }
    body += "</tbody></table>";
    body += &pager.links("/jobs", &params, "jobs");
    Page {
        title: title.into(),
        tab: if failed_view { "failed" } else { "jobs" },
        body,
        live: "counts",
    }
}

/// How a result reads on the job page.
fn output(out: &pb::JobOutput) -> String {
    match &out.value {
        Some(job_output::Value::Fib(digits)) => format!(
            "<code class=result>{}</code> <small>({} digits)</small>",
            shorten(digits, 600),
            digits.len()
        ),
        Some(job_output::Value::Prime(p)) => format!(
            "{} ({})",
            if p.is_prime { "prime" } else { "not prime" },
            esc(&format!("{:?}", p.certainty()).to_lowercase())
        ),
        Some(job_output::Value::SleptMs(ms)) => format!("slept {ms} ms"),
        Some(job_output::Value::Json(json)) => format!(
            "<code class=result>{}</code> <small>(JSON, {} bytes)</small>",
            shorten(json, 600),
            json.len()
        ),
        None => "–".into(),
    }
}

/// One job: its spec, attempts, result or error, worker and timings.
pub(crate) fn job(j: &pb::JobInfo, access: &Access) -> Page {
    let back = format!("/jobs/{}", j.job_id);
    let submitted = drover_common::ids::JobId::parse("job_id", &j.job_id)
        .ok()
        .and_then(|id| id.made_ms())
        .map_or("–".into(), utc);
    let result = match (&j.output, j.error.is_empty()) {
        (Some(out), _) => output(out),
        (None, false) => format!("<span class=error>{}</span>", shorten(&j.error, 2000)),
        (None, true) => "–".into(),
    };
    let run = if j.run_us > 0 {
        format!("{:.3} ms", j.run_us as f64 / 1000.0)
    } else {
        "–".into()
    };
    let st = state_name(j.state);
    let mut body = format!(
        "<h1>Job <code>{id}</code></h1><div class=bulk>{acts}</div><dl class=job>\
         <dt>State</dt><dd class=\"state {st}\" id=job-state>{st}</dd>\
         <dt>Kind</dt><dd>{kind}</dd><dt>Argument</dt><dd><code>{arg}</code></dd>\
         <dt>Batch</dt><dd><a href=\"/jobs?batch={batch}\">{batch}</a> (place {index})</dd>\
         <dt>Priority</dt><dd>{prio}</dd>\
         <dt>Attempts</dt><dd>{started} started, {counted} counted, fails at {max}</dd>\
         <dt>Worker</dt><dd>{worker}</dd><dt>Submitted</dt><dd>{submitted}</dd>\
         <dt>Run time</dt><dd>{run}</dd><dt>Result</dt><dd id=job-result>{result}</dd></dl>",
        id = esc(&j.job_id),
        acts = job_actions(j, access, &back),
        kind = kind_name(j.kind),
        arg = shorten(&j.arg, 2000),
        batch = esc(&j.batch_id),
        index = j.index,
        prio = j.priority,
        started = j.attempts,
        counted = j.counted_attempts,
        max = j.max_attempts,
        worker = if j.worker.is_empty() {
            "–".into()
        } else {
            esc(&j.worker)
        },
    );
    body += "<h2>Failed attempts</h2>";
    if j.attempt_errors.is_empty() {
        body += "<p class=empty>None.</p>";
    } else {
        body += &attempts_list(j);
    }
    Page {
        title: format!("Job {}", short(&j.job_id)),
        tab: "jobs",
        body,
        live: "counts",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_767_225_599_000), "2025-12-31 23:59:59 UTC");
    }

    #[test]
    fn long_values_are_cut_with_a_note_and_escaped() {
        assert_eq!(shorten("<a>", 10), "&lt;a&gt;");
        let s = shorten(&"9".repeat(1000), 10);
        assert!(s.starts_with("99999<span"), "{s}");
        assert!(s.contains("1000 characters in all"), "{s}");
    }
}
