"use strict";
// envserve console: plain JavaScript, no build step, no external resources.
const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) { if (k === "class") node.className = v; else node.setAttribute(k, v); }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return node;
};
const tokenInput = $("#token");
tokenInput.value = sessionStorage.getItem("envserve-token") || "";
tokenInput.addEventListener("change", () => sessionStorage.setItem("envserve-token", tokenInput.value));

async function api(path, options = {}) {
  const headers = Object.assign({"content-type": "application/json"}, options.headers || {});
  if (tokenInput.value) headers["authorization"] = "Bearer " + tokenInput.value;
  const response = await fetch(path, Object.assign({}, options, {headers}));
  const text = await response.text();
  let body;
  try { body = text ? JSON.parse(text) : {}; } catch (e) { body = {error: text}; }
  if (!response.ok) throw Object.assign(new Error(body.error || response.statusText), {status: response.status, body});
  return body;
}
const notice = (message) => { $("#notice").textContent = message || ""; };

// -- tabs -------------------------------------------------------------------------------------------------
const tabs = document.querySelectorAll("nav button");
function show(name) {
  for (const b of tabs) {
    if (b.dataset.tab === name) b.setAttribute("aria-current", "page"); else b.removeAttribute("aria-current");
  }
  for (const s of document.querySelectorAll(".tab")) s.hidden = s.id !== name;
  ({try: loadTry, environments: loadEnvironments, deploy: loadDeploy, settings: loadPlatform}[name] || (() => {}))();
}
for (const b of tabs) b.addEventListener("click", () => show(b.dataset.tab));

// -- models ---------------------------------------------------------------------------------------------
async function loadModels() {
  let rows;
  try { rows = await api("/envserve/models"); } catch (e) { notice(e.message); return; }
  const body = $("#model-rows");
  body.replaceChildren(...rows.map((m) => {
    const env = m.environment;
    const state = el("td", {}, el("span", {class: "state-" + m.state, "data-state": m.state}, m.state));
    if (m.reason) state.append(el("div", {class: "reason"}, m.reason));
    const where = el("td", {}, env ? `Python ${env.python} · ${env.kind} · ${(env.hash || "").slice(0, 12)} · ${size(env.size)}` : "server");
    if (m.shadow) where.append(el("div", {class: "shadow", "data-shadow": m.name}, shadowText(m.shadow)));
    const actions = el("td");
    for (const action of ["load", "unload"]) {
      const button = el("button", {type: "button", "data-action": action, "data-model": m.name}, action === "load" ? (m.state === "READY" ? "Reload" : "Load") : "Unload");
      button.addEventListener("click", () => repository(action, m.name));
      actions.append(button);
    }
    return el("tr", {"data-model": m.name},
      el("td", {}, m.name), el("td", {}, m.version || ""), state, el("td", {}, m.runtime || ""),
      where,
      el("td", {}, String(m.requests ?? "")), el("td", {}, m.mean_latency_ms == null ? "" : m.mean_latency_ms + " ms"), actions);
  }));
  notice("");
}
function shadowText(s) {
  if (s.state !== "READY") return `shadow (${s.environment}): ${s.state}${s.error ? " — " + s.error : ""}`;
  const rows = s.rows.identical + s.rows.close + s.rows.different;
  const agreement = s.agreement == null ? "no rows compared yet" : `agreement ${(100 * s.agreement).toFixed(1)}% of ${rows} rows`;
  return `shadow (${s.environment}, ${Math.round(100 * s.sample)}% of requests): ${agreement} · ${s.rows.different} different · largest difference ${s.max_abs_diff}`;
}
async function repository(action, name) {
  try { await api(`/v2/repository/models/${encodeURIComponent(name)}/${action}`, {method: "POST", body: "{}"}); notice(""); }
  catch (e) { notice(`${action} ${name}: ${e.message}`); }
  loadModels();
}
const size = (n) => n == null ? "" : n > 1 << 30 ? (n / (1 << 30)).toFixed(1) + " GiB" : (n / (1 << 20)).toFixed(0) + " MiB";
setInterval(() => { if (!$("#models").hidden) loadModels(); }, 2000);

// -- try it ---------------------------------------------------------------------------------------------
async function loadTry() {
  const rows = await api("/envserve/models");
  const select = $("#try-model");
  const current = select.value;
  select.replaceChildren(...rows.filter((m) => m.state === "READY").map((m) => el("option", {}, m.name)));
  if (current) select.value = current;
  buildInputs();
}
async function buildInputs() {
  const name = $("#try-model").value;
  const box = $("#try-inputs");
  if (box.dataset.model === name) return;  // already built for this model: keep what was typed
  box.dataset.model = name;
  box.replaceChildren();
  if (!name) return;
  const meta = await api(`/v2/models/${encodeURIComponent(name)}`);
  const inputs = meta.inputs && meta.inputs.length ? meta.inputs : [{name: "input-0", datatype: "FP64", shape: [1, -1]}];
  for (const [i, t] of inputs.entries()) {
    box.append(el("fieldset", {"data-input": t.name}, el("legend", {}, `${t.name} (${t.datatype}, shape ${JSON.stringify(t.shape)})`),
      el("label", {}, "Datatype ", el("input", {name: "datatype", value: t.datatype})),
      el("label", {}, "Shape ", el("input", {name: "shape", value: JSON.stringify(t.shape.map((d) => d < 0 ? 1 : d))})),
      el("label", {}, "Data (JSON) ", el("textarea", {name: "data", rows: "3", spellcheck: "false", id: "try-data-" + i}))));
  }
}
$("#try-model").addEventListener("change", buildInputs);
$("#try-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const out = $("#try-result");
  let body = $("#try-raw").value.trim();
  try {
    if (!body) {
      const inputs = [...document.querySelectorAll("#try-inputs fieldset")].map((f) => ({
        name: f.dataset.input, datatype: f.querySelector("[name=datatype]").value,
        shape: JSON.parse(f.querySelector("[name=shape]").value), data: JSON.parse(f.querySelector("[name=data]").value || "[]")}));
      body = JSON.stringify({inputs});
    }
    const result = await api(`/v2/models/${encodeURIComponent($("#try-model").value)}/infer`, {method: "POST", body});
    out.textContent = JSON.stringify(result, null, 2);
    out.dataset.status = "ok";
  } catch (e) {
    out.textContent = "Error" + (e.status ? ` ${e.status}` : "") + ": " + e.message;
    out.dataset.status = "error";
  }
});

// -- environments ---------------------------------------------------------------------------------------
async function loadEnvironments() {
  const rows = await api("/envserve/environments");
  $("#env-rows").replaceChildren(...rows.map((r) => el("tr", {},
    el("td", {}, r.hash.slice(0, 12)), el("td", {}, r.kind), el("td", {}, r.python_version), el("td", {}, size(r.size)),
    el("td", {}, new Date((r.last_used || r.created) * 1000).toLocaleString()), el("td", {}, (r.models || []).join(", ")),
    el("td", {}, r.source))));
}
$("#prune").addEventListener("click", async () => {
  try { const r = await api("/envserve/environments/prune", {method: "POST", body: "{}"}); notice(`${r.removed.length} environment(s) removed`); }
  catch (e) { notice(e.message); }
  loadEnvironments();
});

// -- deploy ---------------------------------------------------------------------------------------------
let registry = {models: []};
async function loadDeploy() {
  try { registry = await api("/envserve/registry/models"); } catch (e) { notice(e.message); }
  const select = $("#dep-registry");
  select.replaceChildren(el("option", {value: ""}, "— or type a URI below —"), ...registry.models.map((m) => el("option", {}, m.name)));
  render();
}
$("#dep-registry").addEventListener("change", () => {
  const model = registry.models.find((m) => m.name === $("#dep-registry").value);
  const versions = $("#dep-version");
  versions.replaceChildren(...(model ? [...model.versions.map((v) => el("option", {value: v}, "version " + v)),
    ...Object.entries(model.aliases).map(([a, v]) => el("option", {value: "@" + a}, `@${a} (version ${v})`))] : []));
  if (model) { $("#dep-name").value ||= model.name.toLowerCase().replace(/[^a-z0-9-]+/g, "-"); }
  setUri();
});
$("#dep-version").addEventListener("change", setUri);
function setUri() {
  const name = $("#dep-registry").value, ref = $("#dep-version").value;
  if (name && ref) $("#dep-uri").value = ref.startsWith("@") ? `models:/${name}${ref}` : `models:/${name}/${ref}`;
  render();
}
let pending;
$("#deploy-form").addEventListener("input", () => { clearTimeout(pending); pending = setTimeout(render, 200); });
$("#deploy-form").addEventListener("change", () => { clearTimeout(pending); pending = setTimeout(render, 50); });
const imageInput = $("#dep-image");
imageInput.addEventListener("input", () => { delete imageInput.dataset.auto; });
async function render() {
  const fields = Object.fromEntries(new FormData($("#deploy-form")));
  if (imageInput.dataset.auto) fields.image = "";  // the pre-filled platform default is not an override
  let result;
  try { result = await api("/envserve/deploy/render", {method: "POST", body: JSON.stringify(fields)}); }
  catch (e) { result = {manifest: "", errors: [e.message]}; }
  $("#dep-errors").replaceChildren(...result.errors.map((m) => el("li", {}, m)));
  $("#dep-manifest").textContent = result.manifest;
  $("#dep-image-reason").textContent = result.image ? `${result.image.image} — ${result.image.reason}` : "";
  if (result.image && (imageInput.dataset.auto || !imageInput.value)) {  // pre-fill the platform default
    imageInput.value = result.image.image;
    imageInput.dataset.auto = "1";
  }
  const link = $("#dep-download");
  link.hidden = !result.manifest || result.errors.length > 0;
  if (!link.hidden) link.href = URL.createObjectURL(new Blob([result.manifest], {type: "application/yaml"}));
  link.download = (fields.name || "manifest") + "-" + fields.target + ".yaml";
  $("#deploy-form").dataset.valid = String(!link.hidden);
}

// -- settings -------------------------------------------------------------------------------------------
async function loadPlatform() {
  const doc = await api("/envserve/platform");
  $("#platform-rows").replaceChildren(...doc.images.map((r) => el("tr", {}, el("td", {}, r.server), el("td", {}, r.protocol), el("td", {}, r.image), el("td", {}, r.source))));
}
$("#platform-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try { await api("/envserve/platform/image", {method: "POST", body: JSON.stringify(Object.fromEntries(new FormData(event.target)))}); notice(""); }
  catch (e) { notice(e.message); }
  loadPlatform();
});

loadModels();
