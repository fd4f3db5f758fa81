// The policy workbench's page script: plain JavaScript, no build step. Everything it shows that came from a
// policy or a user is put into the page with textContent, never as HTML.
"use strict";

async function api(method, url, body) {
  const resp = await fetch(url, {
    method, credentials: "same-origin",
    headers: {"Content-Type": "application/json", "X-Requested-With": "workbench"},
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await resp.json(); } catch (e) { data = {detail: resp.statusText}; }
  return {status: resp.status, ok: resp.ok, data};
}

function $(id) { return document.getElementById(id); }
function show(el, on) { if (el) el.hidden = !on; }
function text(el, t) { if (el) el.textContent = t; }
function detail(data) {
  const d = data && data.detail;
  if (typeof d === "string") return d;
  if (d && d.message) return d.message;
  return JSON.stringify(d);
}
function cell(tr, value, cls) {
  const td = document.createElement("td");
  td.textContent = value === null || value === undefined ? "–" : String(value);
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}
function fmt(x, d = 3) { return x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(d); }
function pct(x) { return x === null || x === undefined ? "–" : Math.round(100 * x) + "%"; }

// ------------------------------------------------------------------ sign-in, new drafts, rollbacks
function initCommon() {
  const login = $("login-form");
  if (login) login.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const r = await api("POST", "/login", {token: $("token").value});
    if (r.ok) window.location = "/"; else { text($("login-error"), detail(r.data)); show($("login-error"), true); }
  });
  const newDraft = async (body) => {
    const r = await api("POST", "/api/drafts", body);
    if (r.ok) window.location = "/drafts/" + r.data.id; else alert(detail(r.data));
  };
  if ($("new-draft")) $("new-draft").addEventListener("click", () => newDraft({}));
  if ($("draft-from-version")) $("draft-from-version").addEventListener("click",
    (ev) => newDraft({from_version: ev.target.dataset.version}));
  document.querySelectorAll("button.rollback").forEach((b) => b.addEventListener("click", async () => {
    const why = prompt("Roll back to version " + b.dataset.version + ". Why?", "roll back to " + b.dataset.version);
    if (why === null) return;
    const r = await api("POST", "/api/rollback", {to_version: b.dataset.version, base_version: b.dataset.base,
                                                 message: why});
    if (r.ok) window.location = "/";
    else { text($("rollback-result"), detail(r.data)); show($("rollback-result"), true); }
  }));
}

// ------------------------------------------------------------------ the draft editor
function initEditor() {
  const card = $("draft"), editor = $("editor");
  if (!card || !editor) return;
  const draftId = card.dataset.draft;
  let savedText = editor.value, savedAt = card.dataset.updated, timer = null, errorLines = new Set(), lastCheck = 0;

  function renderGutter() {
    const n = editor.value.split("\n").length;
    const out = [];
    for (let i = 1; i <= n; i++) out.push((errorLines.has(i) ? "● " : "  ") + i);
    $("gutter").textContent = out.join("\n");
    $("gutter").scrollTop = editor.scrollTop;
  }
  function goToLine(line) {
    const lines = editor.value.split("\n");
    const start = lines.slice(0, line - 1).reduce((a, l) => a + l.length + 1, 0);
    editor.focus();
    editor.setSelectionRange(start, start + (lines[line - 1] || "").length);
    const lh = parseFloat(getComputedStyle(editor).lineHeight) || 18;
    editor.scrollTop = Math.max(0, (line - 4) * lh);
  }
  async function check() {
    const mine = ++lastCheck;
    const r = await api("POST", "/api/validate", {text: editor.value});
    if (mine !== lastCheck) return;      // a newer check is on its way
    const list = $("problems");
    list.replaceChildren();
    errorLines = new Set();
    const problems = (r.data && r.data.problems) || [];
    for (const p of problems) {
      errorLines.add(p.line);
      const li = document.createElement("li");
      const a = document.createElement("a");
      a.href = "#"; a.textContent = "line " + p.line; a.className = "line-link";
      a.addEventListener("click", (ev) => { ev.preventDefault(); goToLine(p.line); });
      li.appendChild(a);
      li.appendChild(document.createTextNode(": " + p.message));
      list.appendChild(li);
    }
    const summary = $("check-summary");
    if (r.data && r.data.ok) {
      summary.textContent = "✓ valid — version " + r.data.version + ": " + r.data.summary;
      summary.className = "ok";
    } else {
      summary.textContent = problems.length + " problem(s): the draft can be saved, not published";
      summary.className = "error";
    }
    renderGutter();
  }
  function changed() {
    const dirty = editor.value !== savedText;
    text($("save-state"), dirty ? "unsaved changes" : "saved");
    renderGutter();
    clearTimeout(timer);
    timer = setTimeout(check, 350);
  }
  async function save() {
    const r = await api("PUT", "/api/drafts/" + draftId, {text: editor.value, loaded_at: savedAt});
    show($("save-error"), !r.ok);
    if (r.ok) { savedText = editor.value; savedAt = r.data.updated_at; text($("save-state"), "saved " + savedAt); }
    else text($("save-error"), detail(r.data));
    return r.ok;
  }
  editor.addEventListener("input", changed);
  editor.addEventListener("scroll", () => { $("gutter").scrollTop = editor.scrollTop; });
  editor.addEventListener("keydown", (ev) => {
    if ((ev.ctrlKey || ev.metaKey) && ev.key === "s") { ev.preventDefault(); save(); }
  });
  window.addEventListener("beforeunload", (ev) => { if (editor.value !== savedText) ev.preventDefault(); });
  if ($("save")) $("save").addEventListener("click", save);
  if ($("discard")) $("discard").addEventListener("click", async () => {
    if (!confirm("Discard this draft? Its text is lost.")) return;
    const r = await api("DELETE", "/api/drafts/" + draftId);
    if (r.ok) { savedText = editor.value; window.location = "/"; }
  });

  // ---------------------------------------------------------------- impact preview
  let polling = null;
  async function preview(confirmCost) {
    if (!(await save())) return;
    show($("preview-panel"), true);
    show($("preview-error"), false);
    show($("preview-result"), false);
    const r = await api("POST", "/api/drafts/" + draftId + "/preview", {confirm_cost: !!confirmCost});
    if (r.status === 402) {
      const e = r.data.estimate;
      text($("cost-text"), r.data.detail + ". A day's labelling under this draft: " +
        (e.day_usd === null ? "no day labelled yet to estimate from" :
          "≈ $" + e.day_usd.toFixed(2) + " for " + e.day_pairs + " pairs (now ≈ $" + e.day_usd_current.toFixed(2) + ")") +
        ". Basis: " + e.basis + ".");
      show($("cost-confirm"), true);
      return;
    }
    show($("cost-confirm"), false);
    if (!r.ok) { text($("preview-error"), detail(r.data)); show($("preview-error"), true); return; }
    follow(r.data.key);
  }
  function follow(key) {
    clearTimeout(polling);
    const tick = async () => {
      const r = await api("GET", "/api/previews/" + key);
      if (!r.ok) { show($("preview-running"), false); return; }
      const s = r.data;
      show($("preview-panel"), true);
      if (s.state === "done") { show($("preview-running"), false); renderResult(s.result, s.estimate); return; }
      if (s.state === "failed") {
        show($("preview-running"), false);
        text($("preview-error"), "The preview failed: " + s.message + ". Press Preview impact to try again.");
        show($("preview-error"), true);
        return;
      }
      show($("preview-running"), true);
      $("preview-progress").max = s.steps || 2;
      $("preview-progress").value = s.step || 0;
      text($("preview-message"), "Step " + ((s.step || 0) + 1) + " of " + ((s.steps || 2) + 1) + ": " + s.message);
      polling = setTimeout(tick, 1000);
    };
    tick();
  }
  function renderResult(res, estimate) {
    show($("preview-result"), true);
    text($("preview-changes"), "What changed: " + res.changes.join("; "));
    const tbody = $("agreement-table").querySelector("tbody");
    tbody.replaceChildren();
    for (const split of ["calibration", "test"]) {
      const o = res.agreement["old/" + split], n = res.agreement["new/" + split];
      if (!o && !n) continue;
      const tr = document.createElement("tr");
      cell(tr, split + " split");
      const ci = (m) => m && m.qwk_ci95 ? " [" + fmt(m.qwk_ci95[0], 2) + ", " + fmt(m.qwk_ci95[1], 2) + "]" : "";
      cell(tr, o ? fmt(o.qwk) + ci(o) : null, "n");
      cell(tr, n ? fmt(n.qwk) + ci(n) : null, "n");
      cell(tr, o ? pct(o.exact) : null, "n"); cell(tr, n ? pct(n.exact) : null, "n");
      cell(tr, o ? pct(o.within_one) : null, "n"); cell(tr, n ? pct(n.within_one) : null, "n");
      tbody.appendChild(tr);
    }
    const g = res.gate;
    text($("preview-gate"), "Gate now: " + (g.old.passed ? "passes" : "BLOCKS") + "; with the draft: " +
      (g.new.passed ? "passes" : "BLOCKS") + (g.new.reason ? " — " + g.new.reason : ""));
    text($("preview-cost"), estimate ? "This preview cost ≈ $" + estimate.preview_usd.toFixed(2) +
      (estimate.day_usd === null ? "" : "; a day's labelling under the draft ≈ $" + estimate.day_usd.toFixed(2)) : "");
    text($("changed-title"), res.changed_pairs.length + " golden pair(s) change grade");
    const body = $("changed-table").querySelector("tbody");
    body.replaceChildren();
    for (const c of res.changed_pairs.slice(0, 200)) {
      const tr = document.createElement("tr");
      cell(tr, c.split); cell(tr, c.query);
      cell(tr, (c.title || "") + (c.text ? " — " + c.text.slice(0, 140) : ""));
      cell(tr, c.old, "n"); cell(tr, c.new, "n " + (c.new > c.old ? "up" : "down"));
      cell(tr, (c.raters || []).join(", ") + " (mean " + fmt(c.human, 2) + ")");
      cell(tr, c.new_rationale);
      body.appendChild(tr);
    }
  }
  if ($("preview")) $("preview").addEventListener("click", () => preview(false));
  if ($("confirm-cost")) $("confirm-cost").addEventListener("click", () => preview(true));
  if (card.dataset.preview) follow(card.dataset.preview);   // reopened: the preview of this text, where it is

  // ---------------------------------------------------------------- publish
  if ($("publish")) $("publish").addEventListener("click", async () => {
    if (!(await save())) return;
    const r = await api("POST", "/api/drafts/" + draftId + "/publish", {message: $("publish-message").value});
    const out = $("publish-result");
    show(out, true);
    show($("conflict-diff"), false);
    if (r.ok) {
      out.className = "ok";
      out.textContent = "Published version " + r.data.version + ". The next labelling run recalibrates under it.";
      savedText = editor.value;
      setTimeout(() => { window.location = "/"; }, 1200);
      return;
    }
    out.className = "error";
    out.textContent = detail(r.data) + (r.data.problems && r.data.problems.length ?
      " " + r.data.problems.map((p) => "line " + p.line + ": " + p.message).join("; ") : "");
    if (r.status === 409) { $("conflict-diff").textContent = r.data.diff; show($("conflict-diff"), true); }
  });

  // ---------------------------------------------------------------- the form over the header
  const COLUMNS = {
    scale: [["grade", "number", "narrow"], ["label", "text"], ["definition", "area"]],
    dimensions: [["name", "text"], ["description", "area"], ["weight", "number", "narrow"]],
  };
  let formState = null;
  function formRow(table, cols, values, editable) {
    const tr = document.createElement("tr");
    for (const [key, kind, cls] of cols) {
      const td = document.createElement("td");
      if (cls) td.className = cls;
      const input = document.createElement(kind === "area" ? "textarea" : "input");
      if (kind !== "area") input.type = kind === "number" ? "number" : "text";
      if (kind === "number") input.step = "any";
      input.dataset.key = key; input.dataset.kind = kind;
      input.value = values[key] === undefined || values[key] === null ? "" : String(values[key]);
      input.disabled = !editable;
      td.appendChild(input);
      tr.appendChild(td);
    }
    const td = document.createElement("td");
    if (editable) {
      const del = document.createElement("button");
      del.type = "button"; del.textContent = "remove"; del.addEventListener("click", () => tr.remove());
      td.appendChild(del);
    }
    tr.appendChild(td);
    table.querySelector("tbody").appendChild(tr);
  }
  function exampleCols() {
    return [["query", "text"], ...formState.document_fields.map((f) => [f, "area"]), ["grade", "number", "narrow"],
            ["why", "area"]];
  }
  async function loadForm() {
    const r = await api("POST", "/api/form/read", {text: editor.value});
    show($("form-error"), !r.ok);
    if (!r.ok) { text($("form-error"), detail(r.data)); return; }
    formState = r.data;
    for (const key of ["scale", "dimensions"]) {
      const t = $("form-" + key);
      t.querySelector("tbody").replaceChildren();
      for (const row of formState[key]) formRow(t, COLUMNS[key], row, true);
    }
    const ex = $("form-examples"), head = ex.querySelector("thead tr");
    head.replaceChildren();
    for (const [key] of exampleCols()) { const th = document.createElement("th"); th.textContent = key; head.appendChild(th); }
    head.appendChild(document.createElement("th"));
    ex.querySelector("tbody").replaceChildren();
    const editable = formState.examples_editable;
    for (const row of formState.examples.slice(0, 300)) formRow(ex, exampleCols(), row, editable);
    show($("add-example"), editable);
    show($("examples-note"), !editable);
    text($("examples-note"), editable ? "" : formState.examples.length +
         " worked examples: too many for the form; the first 300 are shown, edit them in the text.");
  }
  function readTable(key, cols) {
    return Array.from($("form-" + key).querySelectorAll("tbody tr")).map((tr) => {
      const row = {};
      tr.querySelectorAll("[data-key]").forEach((input) => {
        const v = input.value.trim();
        row[input.dataset.key] = input.dataset.kind === "number" && v !== "" && !Number.isNaN(Number(v)) ? Number(v) : v;
      });
      return row;
    });
  }
  const panel = $("form-panel");
  if (panel) {
    panel.addEventListener("toggle", () => { if (panel.open) loadForm(); });
    $("add-grade").addEventListener("click", () => formRow($("form-scale"), COLUMNS.scale,
      {grade: $("form-scale").querySelectorAll("tbody tr").length}, true));
    $("add-dimension").addEventListener("click", () => formRow($("form-dimensions"), COLUMNS.dimensions, {weight: 1}, true));
    $("add-example").addEventListener("click", () => formRow($("form-examples"), exampleCols(), {}, true));
    $("apply-form").addEventListener("click", async () => {
      const fields = {scale: readTable("scale"), dimensions: readTable("dimensions")};
      if (formState && formState.examples_editable) fields.examples = readTable("examples");
      const r = await api("POST", "/api/form/write", {text: editor.value, fields});
      show($("form-error"), !r.ok);
      if (!r.ok) { text($("form-error"), detail(r.data)); return; }
      editor.value = r.data.text;
      changed();
      editor.scrollTop = 0;
    });
  }

  renderGutter();
  check();
}

document.addEventListener("DOMContentLoaded", () => { initCommon(); initEditor(); });
