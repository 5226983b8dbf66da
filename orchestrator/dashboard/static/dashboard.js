// fedge dashboard: polls api/snapshot and redraws. Everything shown comes from the
// orchestrator's database; device ids and reasons are untrusted text (textContent only).
"use strict";

(function () {
  const token = new URLSearchParams(window.location.search).get("token");
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];
  const charts = {};
  let pollSeconds = 2;
  let updates = 0;

  function $(id) { return document.getElementById(id); }

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function ago(now, t) {
    if (!t) return "-";
    const s = Math.max(0, now - t);
    if (s < 90) return s.toFixed(0) + " s ago";
    if (s < 5400) return (s / 60).toFixed(0) + " min ago";
    return (s / 3600).toFixed(1) + " h ago";
  }

  function fmt(v, digits) {
    return typeof v === "number" ? v.toFixed(digits) : "-";
  }

  function card(label, value) {
    const c = el("div", null, "card");
    c.appendChild(el("div", label, "label"));
    c.appendChild(el("div", value, "value"));
    return c;
  }

  function fillTable(id, rows, empty) {
    const body = $(id).tBodies[0];
    const fresh = document.createElement("tbody");
    if (!rows.length && empty) {
      const td = el("td", empty, "muted");
      td.colSpan = $(id).tHead.rows[0].cells.length;
      fresh.appendChild(document.createElement("tr")).appendChild(td);
    }
    for (const cells of rows) {
      const tr = document.createElement("tr");
      for (const [text, cls] of cells) tr.appendChild(el("td", text, cls));
      fresh.appendChild(tr);
    }
    body.replaceWith(fresh);
  }

  // One uPlot per chart; rebuilt only when its set of series changes, else setData().
  // Whole numbers on the x axis (versions, rounds), half a step of room at either end.
  const X_INCRS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000];

  // bars: how many of the first series are drawn as bars (side by side), the rest as lines.
  function drawChart(id, xLabel, keys, xs, columns, bars, yRange) {
    const box = $(id);
    box.dataset.points = String(columns.reduce(
      (n, col) => Math.max(n, col.filter((v) => v !== null).length), 0));
    const sig = keys.join(",") + "|" + xLabel;
    const data = [xs, ...columns];
    const have = charts[id];
    if (have && have.sig === sig) {
      have.plot.setData(data);
      return;
    }
    if (have) have.plot.destroy();
    const series = [{ label: xLabel }].concat(keys.map((k, i) => {
      const bar = i < bars;
      const color = COLORS[i % COLORS.length];
      const align = bars === 1 ? 0 : i === 0 ? -1 : 1; // two bars: left and right of x
      return {
        label: k,
        stroke: color,
        fill: bar ? color + "99" : undefined,
        width: bar ? 1 : 2,
        spanGaps: true,
        points: { show: !bar, size: 4 },
        paths: bar ? uPlot.paths.bars({ size: [bars === 1 ? 0.6 : 0.4, 30], align }) : undefined,
      };
    }));
    const opts = {
      width: 420,
      height: 200,
      scales: {
        x: { time: false, range: (u, lo, hi) => [lo - 0.5, hi + 0.5] },
        y: yRange ? { range: yRange } : {},
      },
      series: series,
      axes: [{ label: xLabel, incrs: X_INCRS, values: (u, ticks) => ticks.map(String) }, {}],
      legend: { live: false },
    };
    charts[id] = { sig: sig, plot: new uPlot(opts, data, box) };
  }

  function metricChart(id, versions, match, yRange) {
    const keys = [];
    for (const v of versions) {
      for (const k of Object.keys(v.metrics)) {
        if (match(k) && !keys.includes(k)) keys.push(k);
      }
    }
    keys.sort();
    const xs = versions.map((v) => v.version);
    const cols = keys.map((k) => versions.map((v) => (k in v.metrics ? v.metrics[k] : null)));
    drawChart(id, "model version", keys, xs, cols, 0, yRange);
  }

  function render(s) {
    pollSeconds = s.poll_seconds || pollSeconds;
    $("error").hidden = true;
    updates += 1;
    document.body.dataset.updates = String(updates);
    $("updated").textContent = "updated " + new Date(s.now * 1000).toLocaleTimeString();

    const run = s.run;
    $("run").textContent = run
      ? "run " + run.run_id + " · " + run.mode + " · " + run.state + " · bundle " +
        run.bundle_hash.slice(0, 12)
      : s.waiting || "no run yet";

    const progress = $("progress");
    progress.replaceChildren();
    if (s.round) {
      const r = s.round;
      progress.appendChild(card("open round", r.round + (r.kind !== "train" ? " (" + r.kind + ")" : "")));
      progress.appendChild(card("from version", "v" + r.model_version));
      progress.appendChild(card("reports", r.reports + " / " + r.goal + " (" + r.invited + " invited)"));
      progress.appendChild(card("refused in round", r.rejected + r.late + r.duplicates));
      progress.appendChild(card("deadline in", Math.max(0, r.deadline - s.now).toFixed(0) + " s"));
    } else if (s.buffer) {
      const b = s.buffer;
      progress.appendChild(card("buffered deltas", b.buffered));
      progress.appendChild(card("devices training", b.training.length));
      for (const [k, n] of Object.entries(b.counters).sort()) progress.appendChild(card(k, n));
    } else if (run) {
      progress.appendChild(card("open round", "none"));
    }
    if (run && s.rounds) {
      for (const [k, n] of Object.entries(s.rounds).sort()) {
        if (k !== "open") progress.appendChild(card("rounds " + k, n));
      }
    }

    const versions = s.versions;
    $("version-count").textContent = String(versions.length);
    const last = versions.length ? versions[versions.length - 1].metrics : {};
    if ("test_accuracy" in last) {
      progress.appendChild(card("test accuracy (v" + versions[versions.length - 1].version + ")",
        fmt(last.test_accuracy, 4)));
    }
    metricChart("accuracy-chart", versions, (k) => k.includes("accuracy"), [0, 1]);
    metricChart("loss-chart", versions, (k) => k.includes("loss"));

    const unit = s.buffer ? "version" : "round";
    $("bytes-caption").textContent = "KiB per " + unit;
    // up: the counted deltas; down: what the orchestrator served (sync runs' metrics);
    // refused: bytes of updates that were not counted
    const kib = (key) => s.bytes.map((b) => (typeof b[key] === "number" ? b[key] / 1024 : null));
    const bytesKeys = ["up (counted)", "down (served)", "refused"];
    const bytesCols = [kib("accepted"), kib("down"), kib("refused")];
    const keep = bytesCols.map((c, i) => i !== 1 || c.some((v) => v !== null));
    drawChart("bytes-chart", unit, bytesKeys.filter((k, i) => keep[i]), s.bytes.map((b) => b.round),
      bytesCols.filter((c, i) => keep[i]), keep[1] ? 2 : 1,
      (u, lo, hi) => [0, Math.max(1, hi * 1.1)]);

    const t = s.fleet.totals;
    const states = Object.entries(s.fleet.by_state).sort().map(([k, n]) => n + " " + k);
    $("fleet-summary").textContent = t.total + " devices, " + t.eligible + " eligible" +
      (states.length ? " (" + states.join(", ") + ")" : "") +
      (s.fleet.shown < t.total ? " (first " + s.fleet.shown + " shown)" : "");
    fillTable("fleet", s.fleet.devices.map((d) => [
      [d.agent_id], [d.state],
      [d.eligible ? "yes" : "no: " + (d.reason || "?"), d.eligible ? "yes" : "no"],
      [d.backend || "?"], [d.num_samples, "num"], [d.version || "?"], [ago(s.now, d.last_seen)],
    ]), "no device has registered yet");

    $("refused-count").textContent = String(s.refused.length);
    $("refused-unit").textContent = s.buffer ? "slot" : "round";
    fillTable("refused", s.refused.map((u) => [
      [s.buffer ? u.slot : u.round], [u.agent_id], [u.status], [u.reason],
      [u.bytes === undefined ? "-" : u.bytes, "num"], [ago(s.now, u.received)],
    ]), "none: every update so far was counted");
  }

  function showError(text) {
    const e = $("error");
    e.textContent = text;
    e.hidden = false;
  }

  async function poll() {
    try {
      const resp = await fetch("api/snapshot", { headers: headers, cache: "no-store" });
      const body = await resp.json().catch(() => ({ error: resp.status + " " + resp.statusText }));
      if (!resp.ok || body.error) showError(body.error || resp.status + " " + resp.statusText);
      else render(body);
    } catch (err) {
      showError("cannot reach the dashboard server: " + err);
    }
    window.setTimeout(poll, pollSeconds * 1000);
  }

  poll();
})();
