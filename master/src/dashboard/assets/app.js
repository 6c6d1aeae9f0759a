// drover dashboard: live figures from /events (server-sent events, at most
// four a second), and a fresh copy of a list page's <main> when what it
// shows may have changed (at most once a second).
"use strict";
(function () {
  const main = document.getElementById("main");
  const live = document.getElementById("live");
  const mode = main ? main.dataset.live : "none";
  let lastCounts = null, pending = false, fetching = false, lastFetch = 0;

  function setText(key, text) {
    document.querySelectorAll('[data-k="' + key + '"]').forEach(function (el) { el.textContent = text; });
  }
  function ms(v) { return v == null ? "–" : v.toFixed(2) + " ms"; }
  function span(s) {
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor(s % 3600 / 60) + " min";
  }
  function drawChart(series) {
    const line = document.getElementById("series");
    if (!line) return;
    const max = Math.max(1, Math.max.apply(null, series));
    line.setAttribute("points", series.map(function (v, i) {
      return i + "," + (100 - v / max * 95).toFixed(1);
    }).join(" "));
    setText("chart_max", String(max));
  }
  function refresh() {
    if (fetching || Date.now() - lastFetch < 1000) return false;
    fetching = true; lastFetch = Date.now();
    fetch(location.href, { headers: { "X-Drover-Fragment": "1" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) { if (html !== null) main.innerHTML = html; })
      .catch(function () {})
      .then(function () { fetching = false; });
    return true;
  }
  function apply(s) {
    ["queued", "running", "succeeded", "cancelled"].forEach(function (k) { setText(k, String(s[k])); });
    setText("failed", s.failed > 0 ? String(s.failed) : "");
    document.querySelectorAll('main [data-k="failed"]').forEach(function (el) { el.textContent = String(s.failed); });
    setText("jobs_per_s", s.jobs_per_s.toFixed(1));
    setText("workers", String(s.workers));
    setText("busy_slots", s.busy + " / " + s.slots);
    setText("commit_mean_ms", ms(s.commit_mean_ms));
    setText("commit_p99_ms", ms(s.commit_p99_ms));
    setText("uptime", span(s.uptime_s));
    drawChart(s.series);
    const counts = [s.queued, s.running, s.succeeded, s.failed, s.cancelled].join();
    if (mode === "always" || (mode === "counts" && lastCounts !== null && counts !== lastCounts)) pending = true;
    lastCounts = counts;
    if (pending && refresh()) pending = false;
  }
  if (!window.EventSource) return;
  const events = new EventSource("/events");
  events.addEventListener("snapshot", function (e) {
    live.textContent = "live"; live.className = "live on";
    apply(JSON.parse(e.data));
  });
  events.onerror = function () { live.textContent = "offline"; live.className = "live"; };
})();
