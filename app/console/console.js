// The rag-pipeline console: search with every option and each stage's scores, documents and
// their chunks, system figures and quality over time. No framework, no third-party request:
// every request goes to this origin's API. DOM is built with textContent only (no innerHTML),
// so nothing an indexed document holds can become markup.
"use strict";

const KEY_STORE = "rag-pipeline.api-key";
const STAGE_ORDER = ["embed", "search", "retrieve", "fusion", "rerank", "mmr", "hydrate"];
const STAGE_NOTES = {
  dense: "cosine similarity of the query and chunk embeddings (-1..1)",
  bm25: "BM25 over the chunk text (0: no query term matched)",
  fusion: "the fused dense + BM25 score this response ranked by before rerank",
  rerank: "late-interaction MaxSim: mean best cosine per query token",
  mmr: "pick order when diversifying (0 first)",
};
let config = { trace_url_template: null, keys_required: false };

// --- DOM ------------------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs || {})) el.setAttribute(name, String(value));
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function show(...nodes) {
  const main = document.getElementById("main");
  main.replaceChildren(...nodes);
}

function fmt(value, digits = 3) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(digits);
  return String(value);
}

// A document id as one path segment: "." and ".." too, which URL parsing would collapse.
function segment(id) {
  return encodeURIComponent(id).replace(/\./g, "%2E");
}

function when(epochSeconds) {
  return epochSeconds ? new Date(epochSeconds * 1000).toISOString().replace(".000", "") : "–";
}

// --- the API --------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code;
    this.field = error.field;
  }
}

async function api(path, { method = "GET", body } = {}) {
  const headers = { accept: "application/json" };
  if (body !== undefined) headers["content-type"] = "application/json";
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) headers.authorization = `Bearer ${key}`;
  // A path on this origin only: the key never goes anywhere else.
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "omit",
    cache: "no-store",
  });
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (response.status === 401) askForKey(data && data.error && data.error.message);
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

function problem(err) {
  const text = err instanceof ApiError
    ? `${err.status} ${err.code || ""}: ${err.message}${err.field ? ` (field: ${err.field})` : ""}`
    : String(err);
  return h("p", { class: "error", role: "alert" }, text);
}

// --- the API key ----------------------------------------------------------------------------

function askForKey(reason) {
  const dialog = document.getElementById("key-dialog");
  const title = document.getElementById("key-title");
  title.textContent = reason ? `API key: ${reason}` : "API key";
  if (!dialog.open) dialog.showModal();
  document.getElementById("key-input").focus();
}

function setUpKeyDialog() {
  const dialog = document.getElementById("key-dialog");
  const input = document.getElementById("key-input");
  document.getElementById("key-form").addEventListener("submit", () => {
    const key = input.value.trim();
    if (key) sessionStorage.setItem(KEY_STORE, key);
    input.value = "";
  });
  document.getElementById("key-cancel").addEventListener("click", () => dialog.close());
  document.getElementById("key-forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORE);
    input.value = "";
    dialog.close();
  });
  // Once the dialog is closed (and the page no longer inert), run the page again with the key.
  dialog.addEventListener("close", () => route());
  const button = document.getElementById("key-button");
  button.hidden = !config.keys_required;
  button.addEventListener("click", () => askForKey(null));
}

// --- routing --------------------------------------------------------------------------------

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = raw.split("?");
  const parts = path.split("/").map(decodeURIComponent);
  return { page: parts[0] || "search", rest: parts.slice(1).join("/"), params: new URLSearchParams(query) };
}

function route() {
  const { page, rest, params } = parseHash();
  for (const link of document.querySelectorAll("nav a[data-page]")) {
    if (link.dataset.page === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const pages = { search: searchPage, documents: documentsPage, system: systemPage };
  (pages[page] || searchPage)(rest, params).catch((err) => show(problem(err)));
}

// --- search ---------------------------------------------------------------------------------

function searchForm(params) {
  const field = (label, control, hint) =>
    h("div", { class: "field" }, h("label", { for: control.id }, label), control, hint && h("small", {}, hint));
  const query = h("input", {
    id: "q", name: "q", type: "search", required: true, maxlength: 4096,
    value: params.get("q") || "", placeholder: "Ask something", autocomplete: "off",
  });
  const mode = h("select", { id: "mode", name: "mode" },
    ["hybrid", "dense", "bm25"].map((m) => h("option", { value: m, selected: params.get("mode") === m }, m)));
  const topK = h("input", { id: "top_k", name: "top_k", type: "number", min: 1, max: 100, value: params.get("top_k") || 10 });
  const rerank = h("select", { id: "rerank", name: "rerank" },
    [["", "server default"], ["true", "on"], ["false", "off"]].map(([v, t]) =>
      h("option", { value: v, selected: (params.get("rerank") || "") === v }, t)));
  const diversity = h("input", { id: "diversity", name: "diversity", type: "number", min: 0, max: 1, step: 0.05, value: params.get("diversity") || 0 });
  const minScore = h("input", { id: "min_score", name: "min_score", type: "number", min: -1, max: 1, step: 0.05, value: params.get("min_score") || "", placeholder: "none" });
  const filters = h("textarea", { id: "filters", name: "filters", rows: 2, spellcheck: "false", placeholder: '{"topic": "biology", "year": {"gte": 2010}}' }, params.get("filters") || "");
  return h("form", { class: "search", id: "search-form" },
    h("div", { class: "query" }, h("label", { for: "q", class: "visually-hidden" }, "Query"), query,
      h("button", { type: "submit" }, "Search")),
    h("details", { class: "options", open: params.has("mode") || params.has("filters") },
      h("summary", {}, "Options"),
      h("div", { class: "grid" },
        field("Mode", mode, "dense: embeddings; bm25: words; hybrid: both, fused"),
        field("Results (top_k)", topK),
        field("Rerank", rerank, "late interaction over the top candidates"),
        field("Diversity (MMR)", diversity, "0 = relevance only, 1 = novelty only"),
        field("Minimum cosine", minScore, "-1..1, blank for none"),
        field("Filters (JSON)", filters, "metadata field → value, {\"any\": [...]}, or a range"))));
}

function requestOf(form) {
  const data = new FormData(form);
  const body = { query: data.get("q"), mode: data.get("mode"), top_k: Number(data.get("top_k")) };
  if (data.get("rerank")) body.rerank = data.get("rerank") === "true";
  if (Number(data.get("diversity")) > 0) body.diversity = Number(data.get("diversity"));
  if (data.get("min_score") !== "") body.min_score = Number(data.get("min_score"));
  const filters = String(data.get("filters") || "").trim();
  if (filters) body.filters = JSON.parse(filters); // a SyntaxError is shown by the caller
  return body;
}

async function searchPage(_rest, params) {
  const form = searchForm(params);
  const output = h("section", { id: "results", "aria-live": "polite" });
  show(h("h1", { class: "visually-hidden" }, "Search"), form, output);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (String(v) !== "") next.set(k, String(v));
    location.hash = `#/search?${next}`;
  });
  document.getElementById("q").focus();
  if (!params.get("q")) {
    output.append(h("p", { class: "hint" }, "Type a query. Each result shows what every stage scored it; open Options for filters, rerank and diversity."));
    return;
  }
  let body;
  try {
    body = requestOf(form);
  } catch (err) {
    output.replaceChildren(h("p", { class: "error", role: "alert" }, `Filters are not valid JSON: ${err.message}`));
    return;
  }
  output.replaceChildren(h("p", {}, "Searching…"));
  try {
    const answer = await api("/api/v1/search", { method: "POST", body });
    output.replaceChildren(...renderAnswer(answer, body.query));
  } catch (err) {
    output.replaceChildren(problem(err));
  }
}

function traceLink(traceId) {
  if (!traceId || !config.trace_url_template) return null;
  const href = config.trace_url_template.replace("{trace_id}", encodeURIComponent(traceId));
  return h("a", { href, target: "_blank", rel: "noopener noreferrer", class: "trace" }, "Open the trace");
}

function renderAnswer(answer, query) {
  const summary = h("div", { class: "summary" },
    h("p", {},
      `${answer.results.length} results · ${answer.mode}${answer.reranked ? " · reranked" : ""} · `,
      h("span", { title: "the retrieval record's id: feedback and GET /api/v1/retrievals/{id} use it" }, "retrieval "),
      h("code", { class: "rid" }, answer.retrieval_id),
      answer.trace_id ? [" · trace ", h("code", {}, answer.trace_id), " ", traceLink(answer.trace_id)] : null),
    answer.rerank_skipped ? h("p", { class: "hint" }, `Rerank skipped: ${answer.rerank_skipped}`) : null,
    waterfall(answer.timings_ms),
    h("details", { class: "legend-scores" }, h("summary", {}, "What the scores mean"),
      h("p", {}, "score: the final rank score in [0, 1], comparable only within this answer. "
        + "Each bar is that stage's score, scaled to the highest in this answer:"),
      h("dl", { class: "facts" }, Object.entries(STAGE_NOTES).map(([stage, note]) => [h("dt", {}, stage), h("dd", {}, note)]))));
  const maxima = {};
  for (const r of answer.results) {
    for (const [stage, value] of Object.entries(r.scores)) {
      maxima[stage] = Math.max(maxima[stage] || 0, Math.abs(value));
    }
  }
  const list = h("ol", { class: "results" },
    answer.results.map((r, i) => renderResult(r, i, query, maxima, answer.retrieval_id)));
  return [summary, list];
}

function waterfall(timings) {
  const stages = STAGE_ORDER.filter((s) => s in timings)
    .concat(Object.keys(timings).filter((s) => s !== "total" && !STAGE_ORDER.includes(s)));
  const total = timings.total || stages.reduce((sum, s) => sum + timings[s], 0) || 1;
  const rowHeight = 18, width = 600, label = 80;
  const chart = svg("svg", {
    viewBox: `0 0 ${width} ${rowHeight * (stages.length + 1) + 4}`, class: "waterfall", role: "img",
    "aria-label": `Stage timings: ${stages.map((s) => `${s} ${fmt(timings[s], 1)} ms`).join(", ")}; total ${fmt(total, 1)} ms`,
  });
  let start = 0;
  stages.forEach((stage, i) => {
    const ms = timings[stage];
    const x = label + (start / total) * (width - label - 70);
    const w = Math.max(1.5, (ms / total) * (width - label - 70));
    const y = i * rowHeight + 2;
    chart.append(
      svg("text", { x: 0, y: y + 12, class: "label" }, stage),
      svg("rect", { x, y, width: w, height: rowHeight - 6, class: `stage stage-${stage}` }, svg("title", {}, `${stage}: ${fmt(ms, 2)} ms`)),
      svg("text", { x: x + w + 4, y: y + 12, class: "value" }, `${fmt(ms, 1)} ms`));
    start += ms;
  });
  const y = stages.length * rowHeight + 2;
  chart.append(svg("text", { x: 0, y: y + 12, class: "label total" }, "total"),
    svg("text", { x: label, y: y + 12, class: "value total" }, `${fmt(total, 1)} ms`));
  return h("figure", { class: "timings" }, h("figcaption", {}, "Stage timings"), chart);
}

function highlighted(text, query) {
  const terms = [...new Set(query.toLowerCase().match(/[\p{L}\p{N}]{3,}/gu) || [])];
  if (!terms.length) return [text];
  const pattern = new RegExp(`(${terms.map((t) => t.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")).join("|")})`, "giu");
  return text.split(pattern).map((part, i) => (i % 2 === 1 ? h("mark", {}, part) : part));
}

function scoreBars(scores, maxima) {
  return h("dl", { class: "scores" }, Object.entries(scores).map(([stage, value]) => {
    const bar = h("span", { class: `bar stage-${stage}` });
    const scale = stage === "mmr" ? 0 : maxima[stage] || 1;
    bar.style.width = `${Math.max(0, Math.min(100, (Math.abs(value) / scale) * 100))}%`;
    return h("div", { class: "score", title: STAGE_NOTES[stage] || stage },
      h("dt", {}, stage), h("dd", {}, h("span", { class: "track" }, bar), h("span", { class: "num" }, fmt(value))));
  }));
}

function renderResult(r, i, query, maxima, retrievalId) {
  const status = h("span", { class: "sent", role: "status" });
  const judge = (relevance, label) => h("button", {
    type: "button", class: "judge", "aria-label": `${label}: result ${i + 1}`,
    onclick: async (event) => {
      const buttons = event.currentTarget.parentElement.querySelectorAll("button");
      buttons.forEach((b) => { b.disabled = true; });
      try {
        await api("/api/v1/feedback", { method: "POST", body: { retrieval_id: retrievalId, chunk_id: r.chunk_id, relevance } });
        status.textContent = relevance > 0 ? "marked good" : "marked bad";
      } catch (err) {
        status.textContent = `not sent: ${err.message}`;
        buttons.forEach((b) => { b.disabled = false; });
      }
    },
  }, label);
  const metadata = Object.entries(r.metadata || {});
  return h("li", { class: "result" },
    h("div", { class: "head" },
      h("span", { class: "rank" }, `${i + 1}`),
      h("div", {},
        h("h2", {}, r.title || r.doc_id),
        h("p", { class: "meta" },
          h("a", { href: `#/documents/${encodeURIComponent(r.doc_id)}` }, r.doc_id),
          ` · chunk ${r.chunk_index}`,
          r.section && r.section.length ? ` · ${r.section.join(" › ")}` : "",
          ` · score ${fmt(r.score)}`)),
      h("div", { class: "feedback" }, judge(1, "Good"), judge(0, "Bad"), status)),
    h("p", { class: "text" }, highlighted(r.text, query)),
    metadata.length ? h("p", { class: "tags" }, metadata.map(([k, v]) => h("span", { class: "tag" }, `${k}: ${JSON.stringify(v)}`))) : null,
    scoreBars(r.scores, maxima));
}

// --- documents ------------------------------------------------------------------------------

async function documentsPage(rest, params) {
  const input = h("input", { id: "doc-id", name: "id", required: true, value: rest || "", autocomplete: "off" });
  const form = h("form", { class: "inline", id: "doc-form" },
    h("label", { for: "doc-id" }, "Document id"), input, h("button", { type: "submit" }, "Open"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    location.hash = `#/documents/${encodeURIComponent(input.value.trim())}`;
  });
  const output = h("section", { id: "document", "aria-live": "polite" });
  show(h("h1", {}, "Documents"), form, output);
  if (!rest) {
    await documentList(output, params);
    return;
  }
  output.append(h("p", {}, "Loading…"));
  try {
    const doc = await api(`/api/v1/documents/${segment(rest)}?include=text,chunks`);
    output.replaceChildren(...renderDocument(doc));
  } catch (err) {
    output.replaceChildren(problem(err));
  }
}

async function documentList(output, params) {
  const status = params.get("status") || "";
  const query = new URLSearchParams({ limit: "50" });
  if (status) query.set("status", status);
  if (params.get("cursor")) query.set("cursor", params.get("cursor"));
  const filter = h("p", { class: "filters" }, "Show: ",
    ["", "indexed", "pending", "failed", "deleted"].map((s) =>
      h("a", { href: `#/documents?${s ? `status=${s}` : ""}`, "aria-current": s === status ? "true" : null }, s || "all")));
  try {
    const page = await api(`/api/v1/documents?${query}`);
    const rows = (page.documents || []).map((d) => h("tr", {},
      h("td", {}, h("a", { href: `#/documents/${encodeURIComponent(d.doc_id)}` }, d.doc_id)),
      h("td", {}, d.title || ""), h("td", {}, d.status), h("td", {}, fmt(d.chunks)), h("td", {}, h("code", {}, d.version || ""))));
    const next = page.next;
    output.replaceChildren(filter,
      rows.length ? h("table", {}, h("thead", {}, h("tr", {}, ["id", "title", "status", "chunks", "version"].map((c) => h("th", { scope: "col" }, c)))), h("tbody", {}, rows))
        : h("p", { class: "hint" }, "No documents here yet. Ingest some (README, \"Use it\")."),
      next ? h("p", {}, h("a", { href: `#/documents?${new URLSearchParams({ ...(status ? { status } : {}), cursor: next })}` }, "More")) : null);
  } catch (err) {
    output.replaceChildren(filter, problem(err));
  }
}

function renderDocument(doc) {
  const facts = [["status", doc.status], ["version", doc.version], ["event", doc.event_id], ["chunks", doc.chunks], ["error", doc.error]]
    .filter(([, v]) => v !== undefined && v !== null);
  const chunks = doc.chunks_indexed || [];
  return [
    h("h2", {}, doc.title || doc.doc_id),
    h("dl", { class: "facts" }, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, fmt(v))])),
    doc.metadata && Object.keys(doc.metadata).length
      ? h("section", {}, h("h3", {}, "Metadata"), h("pre", { class: "json" }, JSON.stringify(doc.metadata, null, 2)))
      : null,
    doc.text ? h("section", {}, h("h3", {}, "Text"), h("p", { class: "doc-text" }, doc.text)) : null,
    chunks.length ? h("section", {}, h("h3", {}, `Chunks (${chunks.length})`), h("ol", { class: "chunks", start: 0 },
      chunks.map((c) => h("li", {},
        h("p", { class: "meta" }, `chunk ${c.chunk_index}`, c.section && c.section.length ? ` · ${c.section.join(" › ")}` : "", c.chunk_id ? [" · ", h("code", {}, c.chunk_id)] : null),
        h("p", { class: "text" }, c.text))))) : null,
  ];
}

// --- system ---------------------------------------------------------------------------------

async function systemPage(_rest, params) {
  const hours = Math.min(168, Math.max(1, Number(params.get("hours")) || 24));
  const picker = h("p", { class: "filters" }, "Window: ",
    [1, 6, 24, 72, 168].map((n) => h("a", { href: `#/system?hours=${n}`, "aria-current": n === hours ? "true" : null }, `${n} h`)));
  show(h("h1", {}, "System"), picker, h("p", {}, "Loading…"));
  const [ready, stats, quality] = await Promise.allSettled([
    api("/ready").catch((err) => (err.status === 503 ? { ready: false, checks: {} } : Promise.reject(err))),
    api("/api/v1/stats"),
    api(`/api/v1/quality?hours=${hours}&k=10`),
  ]);
  const sections = [h("h1", {}, "System"), picker];
  if (ready.status === "fulfilled") {
    sections.push(h("section", {}, h("h2", {}, ready.value.ready ? "Ready" : "Not ready"),
      h("p", { class: "checks" }, Object.entries(ready.value.checks || {}).map(([k, ok]) =>
        h("span", { class: ok ? "ok" : "bad" }, `${k}: ${ok ? "ok" : "failing"}`)))));
  }
  sections.push(stats.status === "fulfilled" ? renderStats(stats.value) : problem(stats.reason));
  sections.push(quality.status === "fulfilled" ? renderQuality(quality.value) : problem(quality.reason));
  show(...sections);
}

function figure(name, value) {
  if (typeof value === "number" && /bytes$/.test(name)) return `${(value / 2 ** 20).toFixed(1)} MB`;
  if (typeof value === "number" && /_at$/.test(name)) return when(value);
  if (typeof value === "number" && /ratio|rate$/.test(name)) return `${(100 * value).toFixed(1)} %`;
  return fmt(value);
}

function figures(title, object) {
  const rows = Object.entries(object || {}).filter(([, v]) => v === null || typeof v !== "object");
  const nested = Object.entries(object || {}).filter(([, v]) => v !== null && typeof v === "object");
  return h("section", { class: "card" }, h("h2", {}, title),
    h("dl", { class: "facts" }, rows.map(([k, v]) => [h("dt", {}, k.replaceAll("_", " ")), h("dd", {}, figure(k, v))])),
    nested.map(([k, v]) => figures(k.replaceAll("_", " "), v)));
}

function renderStats(stats) {
  return h("div", { class: "cards" }, Object.entries(stats).filter(([, v]) => v).map(([k, v]) => figures(k, v)));
}

function renderQuality(q) {
  const hours = q.per_hour || [];
  const labels = hours.map((x) => x.hour.slice(11, 16));
  const fb = q.feedback || {};
  const total = (q.latency_ms || {}).total || {};
  const headline = h("dl", { class: "facts wide" },
    [["retrievals", q.retrievals], ["zero-result rate", q.zero_result_rate], ["latency p50 (ms)", total.p50],
      ["latency p95 (ms)", total.p95], [`P@${fb.k}`, fb.precision_at_k], ["MRR", fb.mrr],
      ["judged retrievals", fb.judged_retrievals], ["feedback judgements", fb.judgements]]
      .map(([k, v]) => [h("dt", {}, k), h("dd", { dataset: { figure: k } }, fmt(v))]));
  const note = q.hours_exceed_window
    ? h("p", { class: "hint" }, `The streams hold events from ${when(q.window_start)} on (older ones were trimmed by retention, or never recorded): the figures start there.`)
    : null;
  return h("section", { class: "quality" }, h("h2", {}, "Quality"), note, headline,
    lineChart("Retrievals and zero-result rate per hour", labels, [
      { name: "retrievals", values: hours.map((x) => x.retrievals) },
      { name: "zero-result rate (×100)", values: hours.map((x) => (x.retrievals ? (100 * x.zero_results) / x.retrievals : null)) },
    ]),
    lineChart("Search latency per hour (ms)", labels, [
      { name: "p50", values: hours.map((x) => x.latency_p50_ms ?? null) },
      { name: "p95", values: hours.map((x) => x.latency_p95_ms ?? null) },
    ]),
    lineChart(`P@${fb.k} and MRR per hour (judged retrievals)`, labels, [
      { name: `P@${fb.k}`, values: hours.map((x) => x.precision_at_k ?? null) },
      { name: "MRR", values: hours.map((x) => x.mrr ?? null) },
    ], 1));
}

function lineChart(title, labels, series, fixedMax) {
  const width = 640, height = 200, left = 44, bottom = 22, top = 8, right = 24;
  const values = series.flatMap((s) => s.values).filter((v) => v !== null && v !== undefined);
  const max = fixedMax || Math.max(1, ...values) * 1.1;
  const x = (i) => left + (labels.length > 1 ? (i / (labels.length - 1)) * (width - left - right) : (width - left - right) / 2);
  const y = (v) => top + (1 - v / max) * (height - top - bottom);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": title });
  for (const f of [0, 0.5, 1]) {
    chart.append(svg("line", { x1: left, x2: width - right, y1: y(max * f), y2: y(max * f), class: "grid" }),
      svg("text", { x: left - 4, y: y(max * f) + 4, class: "axis", "text-anchor": "end" }, fmt(max * f, max < 10 ? 2 : 0)));
  }
  const step = Math.max(1, Math.ceil(labels.length / 8));
  labels.forEach((label, i) => {
    if (i % step === 0) chart.append(svg("text", { x: x(i), y: height - 6, class: "axis", "text-anchor": "middle" }, label));
  });
  series.forEach((s, n) => {
    let path = "";
    s.values.forEach((v, i) => {
      if (v === null || v === undefined) return;
      path += `${path && s.values[i - 1] !== null && s.values[i - 1] !== undefined ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
      chart.append(svg("circle", { cx: x(i), cy: y(v), r: 2.5, class: `series-${n}` }, svg("title", {}, `${labels[i]} ${s.name}: ${fmt(v, 2)}`)));
    });
    if (path) chart.prepend(svg("path", { d: path, class: `line series-${n}` }));
  });
  const legend = h("p", { class: "legend" }, series.map((s, n) => h("span", { class: `key series-${n}` }, s.name)));
  const table = h("details", {}, h("summary", {}, "Values"),
    h("table", {}, h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "hour"), series.map((s) => h("th", { scope: "col" }, s.name)))),
      h("tbody", {}, labels.map((label, i) => h("tr", {}, h("td", {}, label), series.map((s) => h("td", {}, fmt(s.values[i], 2))))))));
  return h("figure", { class: "plot" }, h("figcaption", {}, title), chart, legend, table);
}

// --- start ----------------------------------------------------------------------------------

async function start() {
  try {
    const response = await fetch("/console/config.json", { cache: "no-store" });
    if (response.ok) config = await response.json();
  } catch {
    // The defaults: no trace links, no key button until a 401 asks for one.
  }
  setUpKeyDialog();
  window.addEventListener("hashchange", route);
  // Ask first rather than let the first request fail with a 401.
  if (config.keys_required && !sessionStorage.getItem(KEY_STORE)) askForKey(null);
  route();
}

document.addEventListener("DOMContentLoaded", start);
