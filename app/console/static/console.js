// The console page: one server-sent event every tick carries the whole snapshot; each hop's
// box is redrawn from it and the sparklines (uPlot) get the last ten minutes of rates.
"use strict";

// Which sparklines each hop shows (series names from the sampler's SERIES).
const SPARKS = {
  api: ["api_requests", "api_records"],
  kafka: ["kafka_user_events", "kafka_purchased_item"],
  mongo: ["mongo_events"],
  spark: ["spark_rows"],
};
const plots = {};

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  for (const child of children) node.append(child === null || child === undefined ? "" : String(child));
  return node;
}

function num(value, digits) {
  if (value === null || value === undefined) return "\u2013";
  return Number(value).toLocaleString("en-US", { maximumFractionDigits: digits ?? 0 });
}

function bytes(n) {
  if (n === null || n === undefined) return "\u2013";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function ago(iso) {
  if (!iso) return "\u2013";
  const seconds = (Date.now() - Date.parse(iso)) / 1000;
  const past = seconds >= 0;
  const s = Math.abs(seconds);
  const text = s < 90 ? `${Math.round(s)} s` : s < 5400 ? `${Math.round(s / 60)} min` : `${(s / 3600).toFixed(1)} h`;
  return past ? `${text} ago` : `in ${text}`;
}

function seconds(value) {
  return value === null || value === undefined ? "\u2013" : `${num(value, 1)} s`;
}

// Figure rows per hop: [label, value, its data-figure name (tests read them)].
function figureRows(key, f, rates) {
  // A hop that never answered has nothing to show but its reason.
  if (!Object.keys(f).length) return [];
  switch (key) {
    case "api": {
      const refusals = Object.entries(f.refusals || {}).map(([s, n]) => `${s}: ${num(n)}`).join(", ");
      return [
        ["requests/s", num(rates.api_requests, 1), "api-requests-rate"],
        ["accepted records/s", num(rates.api_records, 1), "api-records-rate"],
        ["requests (total)", num(f.requests), "api-requests"],
        ["records accepted", num(f.records), "api-records"],
        ["refusals by status", refusals || "none", "api-refusals"],
        ["produce failures", num(f.produce_failures), "api-produce-failures"],
      ];
    }
    case "kafka": {
      const rows = [];
      const rateOf = { 0: rates.kafka_user_events, 1: rates.kafka_purchased_item };
      (f.topics || []).forEach((t, i) => {
        rows.push([t.topic]);
        rows.push(["records/s", num(rateOf[i], 1), `kafka-rate-${i}`]);
        rows.push(["records", num(t.records), `kafka-records-${i}`]);
        rows.push(["partitions", num(t.partitions), `kafka-partitions-${i}`]);
      });
      rows.push(["drain group lag", num(f.drain_lag), "kafka-lag"]);
      if (f.missing) rows.push(["missing topics", `${f.missing.join(", ")} (run task infra-up)`, "kafka-missing"]);
      // Unread offsets retention deleted or is about to delete, then the gaps the drain found.
      (f.retention || []).forEach((line, i) => rows.push(["retention", line, `kafka-retention-${i}`]));
      (f.drain_gaps || []).forEach((line, i) => rows.push(["drain gap", line, `kafka-gap-${i}`]));
      return rows;
    }
    case "airflow": {
      return [
        ["DAG", `${f.dag_id}${f.paused ? " (paused)" : ""}`, "airflow-dag"],
        ["next run", ago(f.next_run), "airflow-next"],
      ];
    }
    case "mongo":
      return [
        ["user_events", num(f.user_events), "mongo-events"],
        ["user_event_counts", num(f.user_event_counts), "mongo-counts"],
        ["quarantine", num(f.quarantine), "mongo-quarantine"],
        ["events stored/s", num(rates.mongo_events, 1), "mongo-rate"],
      ];
    case "spark":
      if (f.batch === null || f.batch === undefined) {
        return [["last batch", "none committed yet", "spark-batch"], ["quarantined rows", num(f.quarantined_rows), "spark-quarantined"]];
      }
      return [
        ["last batch", `#${f.batch}${f.running ? " (next running)" : ""}`, "spark-batch"],
        ["committed", `${num(f.committed_ago)} s ago`, "spark-committed"],
        ["rows in batch", num(f.rows), "spark-rows"],
        ["rows/s (batch)", num(f.rows_per_second, 1), "spark-rate"],
        ["batch duration", seconds(f.duration), "spark-duration"],
        ["freshness (POST to readable)", seconds(f.freshness), "spark-freshness"],
        ["waiting in Kafka", num(f.pending), "spark-pending"],
        ["quarantined rows", num(f.quarantined_rows), "spark-quarantined"],
        ["lost past retention (acknowledged)", num(f.lost_offsets), "spark-lost"],
      ];
    case "lake":
      return [
        ["Parquet files", num(f.files), "lake-files"],
        ["bytes", bytes(f.bytes), "lake-bytes"],
        ["newest ingest_date", f.newest_ingest_date || "\u2013", "lake-date"],
        // Records the stream has not read that Kafka's retention deletes soon.
        ...(f.stream_retention || []).map((line, i) => ["retention", line, `lake-retention-${i}`]),
      ];
    case "postgres":
      return [
        ["table", f.table || "\u2013", "pg-table"],
        ["rows", f.rows === null ? "no table yet (task analyze)" : num(f.rows), "pg-rows"],
        ["written", ago(f.written), "pg-written"],
      ];
    default:
      return [];
  }
}

function table(headers, rows) {
  const t = el("table");
  const head = el("tr");
  t.append(head);
  for (const h of headers) head.append(el("th", {}, h));
  for (const row of rows) {
    const tr = el("tr");
    for (const [value, cls] of row) tr.append(el("td", { class: cls || "", title: value }, value));
    t.append(tr);
  }
  return t;
}

function extra(key, f) {
  if (key === "airflow" && f.runs) {
    if (!f.runs.length) return el("div", { class: "note" }, "no runs yet");
    return table(["last runs", "state", "took"], f.runs.map((r) => [
      [ago(r.started)], [r.state, r.state], [seconds(r.duration), "n"],
    ]));
  }
  if (key === "mongo" && f.top_users) {
    if (!f.top_users.length) return el("div", { class: "note" }, "no counts yet");
    return table(["top users", "event", "count"], f.top_users.map((u) => [
      [u.UserId], [u.EventName], [num(u.EventCount), "n"],
    ]));
  }
  if (key === "lake" && f.top_products) {
    if (!f.top_products.length) return el("div", { class: "note", "data-figure": "lake-top" }, "no purchases in the last hour");
    const t = table(["top 10 products, last hour", "units"], f.top_products.map((p) => [[p.product], [num(p.units), "n"]]));
    t.setAttribute("data-figure", "lake-top");
    return t;
  }
  return null;
}

function sparkline(box, name, label) {
  if (!plots[name]) {
    const holder = el("div");
    box.querySelector("[data-sparks]").append(el("div", { class: "spark-label" }, label), holder);
    const width = Math.max(box.clientWidth - 26, 120);
    plots[name] = new uPlot({
      width, height: 42, legend: { show: false }, cursor: { show: false },
      scales: {
        // Always the last ten minutes, so a young history grows from the right edge.
        x: { time: true, range: (u, min, max) => [max - 600, max] },
        y: { range: (u, min, max) => [0, Math.max(max || 0, 1) * 1.1] },
      },
      axes: [{ show: false }, { show: false }],
      series: [{}, {
        stroke: "#3b6fd8", fill: "rgba(59,111,216,.12)", width: 1.5, spanGaps: true, points: { show: false },
      }],
    }, [[], []], holder);
  }
  return plots[name];
}

function render(snapshot) {
  document.getElementById("at").textContent = `as of ${snapshot.at}`;
  for (const [key, hop] of Object.entries(snapshot.hops)) {
    const box = document.querySelector(`[data-hop="${key}"]`);
    if (!box) continue;
    // One hop that cannot be drawn must not take the others with it; the error is still
    // logged, so the browser test fails on it.
    try {
      renderHop(box, key, hop, snapshot);
    } catch (error) {
      console.error(`hop ${key}:`, error);
      box.querySelector("[data-figures]").replaceChildren(el("dt", { class: "group" }, `could not draw: ${error}`));
    }
  }
}

function renderHop(box, key, hop, snapshot) {
  box.classList.remove("up", "down", "waiting");
  box.classList.add(hop.state);
  box.querySelector("[data-state]").textContent = hop.state;
  const note = box.querySelector("[data-down]");
  note.hidden = hop.state !== "down";
  box.querySelector("[data-reason]").textContent = hop.reason || "";
  box.querySelector("[data-fix]").textContent = hop.fix ? `Fix: ${hop.fix}` : "";
  const dl = box.querySelector("[data-figures]");
  dl.replaceChildren();
  for (const [label, value, figure] of figureRows(key, hop.figures, snapshot.rates)) {
    // A row with a label only heads the rows below it (a topic's figures).
    if (value === undefined) dl.append(el("dt", { class: "group" }, label));
    else dl.append(el("dt", {}, label), el("dd", { "data-figure": figure, title: value }, value));
  }
  const more = extra(key, hop.figures);
  box.querySelector("[data-extra]").replaceChildren(...(more ? [more] : []));
  for (const name of SPARKS[key] || []) {
    const points = snapshot.history.series[name];
    sparkline(box, name, `${snapshot.labels[name]}, last 10 min`).setData([snapshot.history.t, points]);
  }
}

function connect() {
  const link = document.getElementById("link");
  const source = new EventSource("events");
  source.onopen = () => { link.textContent = "live"; link.className = "link up"; };
  source.onerror = () => { link.textContent = "console unreachable, retrying\u2026"; link.className = "link down"; };
  source.onmessage = (event) => render(JSON.parse(event.data));
}

connect();
