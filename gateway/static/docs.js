// The gateway's own interactive viewer of /api/gateway/openapi.json.
// Everything from the document goes into the page as text (textContent),
// never as markup. A link to #<method> <path> opens that operation; a GET
// one is also sent at once (safe by definition), so a result can be shared.
"use strict";
const METHODS = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];
let DOC = null;

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function resolve(obj) {
  // Follows local $refs (the merged document has no other kind).
  let n = 0;
  while (obj && typeof obj === "object" && typeof obj.$ref === "string" && n++ < 32) {
    if (!obj.$ref.startsWith("#/")) return {};
    let cur = DOC;
    for (const raw of obj.$ref.slice(2).split("/")) {
      const key = raw.replace(/~1/g, "/").replace(/~0/g, "~");
      cur = cur == null ? undefined : cur[key];
    }
    if (cur === undefined) return {};
    obj = cur;
  }
  return obj || {};
}

function sample(schema, depth, seen) {
  seen = seen || new Set();
  if (depth > 6 || !schema) return null;
  if (schema.$ref) {
    if (seen.has(schema.$ref)) return null;
    const next = new Set(seen); next.add(schema.$ref);
    return sample(resolve(schema), depth + 1, next);
  }
  if ("example" in schema) return schema.example;
  if (Array.isArray(schema.examples) && schema.examples.length) return schema.examples[0];
  if ("default" in schema) return schema.default;
  if ("const" in schema) return schema.const;
  if (Array.isArray(schema.enum) && schema.enum.length) return schema.enum[0];
  if (Array.isArray(schema.allOf)) {
    const out = {};
    for (const part of schema.allOf) Object.assign(out, sample(part, depth + 1, seen) || {});
    return out;
  }
  for (const key of ["oneOf", "anyOf"]) {
    if (Array.isArray(schema[key]) && schema[key].length) {
      const pick = schema[key].find((s) => resolve(s).type !== "null") || schema[key][0];
      return sample(pick, depth + 1, seen);
    }
  }
  let type = schema.type;
  if (Array.isArray(type)) type = type.find((t) => t !== "null") || type[0];
  if (!type && schema.properties) type = "object";
  switch (type) {
    case "object": {
      const out = {};
      for (const [k, v] of Object.entries(schema.properties || {})) out[k] = sample(v, depth + 1, seen);
      return out;
    }
    case "array": return [sample(schema.items || {}, depth + 1, seen)];
    case "integer": return schema.minimum !== undefined ? schema.minimum : 0;
    case "number": return schema.minimum !== undefined ? schema.minimum : 0;
    case "boolean": return true;
    case "string":
      if (schema.format === "date-time") return new Date().toISOString();
      if (schema.format === "email") return "user@example.com";
      if (schema.format === "uuid") return "00000000-0000-0000-0000-000000000000";
      return "string";
    default: return null;
  }
}

function renderServices(info) {
  const box = document.getElementById("services");
  box.replaceChildren();
  for (const [name, s] of Object.entries(info["x-gateway-services"] || {})) {
    const chip = h("span", {class: s.available ? "up" : "down", "data-service": name}, name);
    if (!s.available) chip.title = s.error || "unavailable";
    if (!s.available) chip.append(h("span", {class: "muted"}, " unavailable: " + (s.error || "")));
    box.append(chip);
  }
}

function paramRows(op, pathItem) {
  const params = [...(pathItem.parameters || []), ...(op.parameters || [])].map((p) => resolve(p));
  const byKey = new Map();
  for (const p of params) if (p.name) byKey.set(p.in + ":" + p.name, p);  // operation-level wins
  return [...byKey.values()];
}

async function send(method, path, params, inputs, bodyBox, ctypeBox, out) {
  let url = path;
  const query = new URLSearchParams();
  const headers = {};
  for (const p of params) {
    const v = inputs.get(p.in + ":" + p.name).value;
    if (v === "") continue;
    if (p.in === "path") url = url.split("{" + p.name + "}").join(encodeURIComponent(v));
    else if (p.in === "query") query.append(p.name, v);
    else if (p.in === "header") headers[p.name] = v;
  }
  const qs = query.toString();
  if (qs) url += "?" + qs;
  const init = {method: method.toUpperCase(), headers};
  if (bodyBox && !["GET", "HEAD"].includes(init.method)) {
    init.body = bodyBox.value;
    headers["Content-Type"] = ctypeBox.value;
  }
  out.replaceChildren(h("div", {class: "muted"}, init.method + " " + url + " …"));
  const t0 = performance.now();
  try {
    const resp = await fetch(url, init);
    const text = await resp.text();
    const ms = (performance.now() - t0).toFixed(1);
    let shown = text;
    try { shown = JSON.stringify(JSON.parse(text), null, 2); } catch (e) { /* not JSON */ }
    const hdrs = [...resp.headers.entries()].map(([k, v]) => k + ": " + v).join("\n");
    out.replaceChildren(
      h("div", {}, h("span", {class: resp.ok ? "status-ok" : "status-bad", "data-status": resp.status},
                     String(resp.status)), " ", resp.statusText, h("span", {class: "muted"}, "  " + ms + " ms  ",
                     init.method + " " + url)),
      h("pre", {class: "resp-headers"}, hdrs),
      h("pre", {class: "resp-body"}, shown));
  } catch (err) {
    out.replaceChildren(h("div", {class: "status-bad"}, "request failed: " + err));
  }
}

function renderOp(path, method, op, pathItem) {
  const params = paramRows(op, pathItem);
  const inputs = new Map();
  const body = h("div", {class: "body"});
  if (op.description) body.append(h("p", {}, op.description));
  if (params.length) {
    const tbody = h("tbody");
    for (const p of params) {
      const schema = resolve(p.schema || {});
      const ex = p.example !== undefined ? p.example : (schema.default !== undefined ? schema.default : "");
      const input = h("input", {type: "text", "data-param": p.name});
      input.value = typeof ex === "object" ? JSON.stringify(ex) : String(ex);
      inputs.set(p.in + ":" + p.name, input);
      tbody.append(h("tr", {}, h("td", {}, p.name, p.required ? h("span", {class: "req"}, " *") : null),
                      h("td", {class: "muted"}, p.in), h("td", {class: "muted"}, schema.type || ""),
                      h("td", {}, input)));
    }
    body.append(h("h4", {}, "Parameters"),
                h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "name"), h("th", {}, "in"),
                                                  h("th", {}, "type"), h("th", {}, "value"))), tbody));
  }
  let bodyBox = null, ctypeBox = null;
  const rb = op.requestBody ? resolve(op.requestBody) : null;
  if (rb && rb.content) {
    const types = Object.keys(rb.content);
    ctypeBox = h("select", {}, ...types.map((t) => h("option", {}, t)));
    const media = rb.content[types[0]] || {};
    const ex = media.example !== undefined ? media.example : sample(media.schema || {}, 0);
    bodyBox = h("textarea", {"data-body": "1"});
    bodyBox.value = typeof ex === "string" ? ex : JSON.stringify(ex, null, 2);
    body.append(h("h4", {}, "Request body", rb.required ? h("span", {class: "req"}, " *") : null), ctypeBox, bodyBox);
  }
  const out = h("div", {class: "result"});
  const go = () => send(method, path, params, inputs, bodyBox, ctypeBox, out);
  body.append(h("p", {}, h("button", {onclick: go}, "Send")), out);
  const responses = h("tbody");
  for (const [code, r0] of Object.entries(op.responses || {})) {
    const r = resolve(r0);
    const media = r.content ? Object.values(r.content)[0] : null;
    const shape = media && media.schema ? JSON.stringify(sample(media.schema, 0), null, 2) : "";
    responses.append(h("tr", {}, h("td", {}, code), h("td", {}, r.description || "",
                                                      shape ? h("pre", {}, shape) : null)));
  }
  body.append(h("h4", {}, "Responses"), h("table", {}, responses));
  const el = h("div", {class: "op", "data-path": path, "data-method": method},
               h("div", {class: "head", onclick: () => el.classList.toggle("open")},
                 h("span", {class: "m " + method}, method), h("span", {class: "path"}, path),
                 h("span", {class: "summary"}, op.summary || "")), body);
  el.dataset.search = (method + " " + path + " " + (op.summary || "") + " " + (op.tags || []).join(" ")).toLowerCase();
  el.send = go;
  return el;
}

function render() {
  const groups = new Map();
  for (const t of DOC.tags || []) groups.set(t.name, {tag: t, ops: []});
  for (const [path, item] of Object.entries(DOC.paths || {})) {
    for (const m of METHODS) {
      if (!item[m]) continue;
      const tag = (item[m].tags || ["default"])[0];
      if (!groups.has(tag)) groups.set(tag, {tag: {name: tag}, ops: []});
      groups.get(tag).ops.push(renderOp(path, m, item[m], item));
    }
  }
  const box = document.getElementById("ops");
  box.replaceChildren();
  for (const {tag, ops} of groups.values()) {
    if (!ops.length) continue;
    box.append(h("section", {"data-tag": tag.name}, h("h2", {}, tag.name, tag.description ? h("small", {}, tag.description) : null), ...ops));
  }
  const schemas = Object.entries((DOC.components || {}).schemas || {});
  if (schemas.length) {
    const list = h("div");
    for (const [name, s] of schemas) {
      list.append(h("details", {}, h("summary", {class: "path"}, name), h("pre", {}, JSON.stringify(s, null, 2))));
    }
    document.getElementById("schemas").replaceChildren(h("h2", {}, "Schemas"), list);
  }
}

function openFromHash() {
  const want = decodeURIComponent(location.hash.slice(1));  // "get /api/service1/orders"
  const space = want.indexOf(" ");
  if (space < 0) return;
  const method = want.slice(0, space).toLowerCase(), path = want.slice(space + 1);
  for (const op of document.querySelectorAll(".op")) {
    if (op.dataset.method !== method || op.dataset.path !== path) continue;
    op.classList.add("open");
    op.scrollIntoView();
    if (method === "get") op.send();
  }
}
window.addEventListener("hashchange", openFromHash);

document.getElementById("filter").addEventListener("input", (ev) => {
  const q = ev.target.value.trim().toLowerCase();
  for (const op of document.querySelectorAll(".op")) op.style.display = op.dataset.search.includes(q) ? "" : "none";
});

fetch("/api/gateway/openapi.json").then((r) => r.json()).then((doc) => {
  DOC = doc;
  document.getElementById("title").textContent = (doc.info && doc.info.title) || "API";
  document.getElementById("version").textContent = "OpenAPI " + doc.openapi + " · version " + ((doc.info && doc.info.version) || "");
  renderServices(doc.info || {});
  render();
  openFromHash();
}).catch((err) => { document.getElementById("error").textContent = "cannot load /api/gateway/openapi.json: " + err; });
