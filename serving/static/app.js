// The try-it page (served by recsys-serve at /): pick catalog items into a history, pick tiers, and
// compare each tier's top-k side by side with the latency of each call.
//
// Catalog text (item ids, titles, error messages) is untrusted: it only ever reaches the page through
// textContent / attribute values, never innerHTML. No inline script or style (the page's
// Content-Security-Policy allows 'self' only).
//
// Items are shown as "title (id)" (just the id when the export has no title for it): the search
// matches ids and titles (GET /items), and the answers of POST /recommend carry "titles" next to
// "items". Titles learnt from either are kept in state.titles; the ids of a history given in the
// address are looked up once (GET /items?q=ID) to show theirs.
//
// Query string (read on load, rewritten after each comparison):
//   ?history=ID1,ID2&tiers=d4,d8&k=5&exclude_seen=0&q=TEXT
// history: item ids, oldest first, comma-separated; tiers: tier names; with both, the page compares
// at once. <body data-state> is loading | ready | running | done | error.
"use strict";

(function () {
  const SEARCH_LIMIT = 20;
  const SEARCH_DELAY_MS = 150;
  const TITLE_LOOKUPS = 100; // most history ids from the address whose titles are looked up on load

  const state = {
    tiers: [], // [{name, size}] sorted by size
    defaultTier: null,
    catalogSize: null,
    maxHistory: null,
    history: [], // item ids, oldest first
    titles: new Map(), // item id -> title, as far as the server told them
    searchSeq: 0,
    runSeq: 0,
    searchTimer: null,
    lastResults: [],
  };

  const $ = (id) => document.getElementById(id);

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function rememberTitle(id, title) {
    if (typeof title === "string" && title) state.titles.set(String(id), title);
  }

  // The text an item is shown as: "title (id)", or the id alone when its title is unknown.
  function itemText(id) {
    const title = state.titles.get(id);
    return title ? title + " (" + id + ")" : id;
  }

  // node (data-item = the id) filled with the item's title and id, as text only.
  function fillItem(node, id) {
    node.dataset.item = id;
    const title = state.titles.get(id);
    if (title) {
      node.append(el("span", "item-title", title), document.createTextNode(" "), el("span", "item-id muted", "(" + id + ")"));
    } else {
      node.appendChild(el("span", "item-id", id));
    }
    return node;
  }

  function setState(value) {
    document.body.dataset.state = value;
  }

  function showError(message) {
    setState("error");
    const status = $("status");
    status.className = "error";
    status.textContent = message;
  }

  window.addEventListener("error", (event) => {
    document.body.dataset.jsError = String(event.message || event.error || "error");
    showError("The page failed: " + document.body.dataset.jsError);
  });
  window.addEventListener("unhandledrejection", (event) => {
    document.body.dataset.jsError = String(event.reason && event.reason.message ? event.reason.message : event.reason);
    showError("The page failed: " + document.body.dataset.jsError);
  });

  // One HTTP call: {ok, status, body, ms (round trip, client side), serverMs (Server-Timing) | null}.
  async function call(path, options) {
    const start = performance.now();
    let response;
    try {
      response = await fetch(path, options);
    } catch (err) {
      return { ok: false, status: 0, body: { error: "network error: " + err }, ms: performance.now() - start, serverMs: null };
    }
    let body;
    try {
      body = await response.json();
    } catch (err) {
      body = { error: "the answer was not JSON (HTTP " + response.status + ")" };
    }
    const ms = performance.now() - start;
    let serverMs = null;
    const timing = response.headers.get("server-timing");
    const match = timing ? /dur=([0-9.]+)/.exec(timing) : null;
    if (match) serverMs = Number(match[1]);
    return { ok: response.ok, status: response.status, body: body, ms: ms, serverMs: serverMs };
  }

  function errorText(result) {
    const body = result.body || {};
    let text = "HTTP " + result.status + ": " + (typeof body.error === "string" ? body.error : "request failed");
    if (Array.isArray(body.detail) && body.detail.length) {
      text += " (" + body.detail.map((d) => String(d.msg)).join("; ") + ")";
    }
    return text;
  }

  // ------------------------------------------------------------------ query string
  function listParam(params, key) {
    const out = [];
    for (const value of params.getAll(key)) {
      for (const part of value.split(",")) {
        const item = part.trim();
        if (item) out.push(item);
      }
    }
    return out;
  }

  function readQuery() {
    const params = new URLSearchParams(window.location.search);
    return {
      history: listParam(params, "history"),
      tiers: listParam(params, "tiers"),
      k: params.get("k"),
      excludeSeen: params.get("exclude_seen"),
      q: params.get("q"),
    };
  }

  function writeQuery() {
    const params = new URLSearchParams();
    if (state.history.length) params.set("history", state.history.join(","));
    const chosen = chosenTiers();
    if (chosen.length) params.set("tiers", chosen.join(","));
    params.set("k", $("k").value);
    if (!$("exclude-seen").checked) params.set("exclude_seen", "0");
    const q = $("search").value;
    if (q) params.set("q", q);
    window.history.replaceState(null, "", "?" + params.toString());
  }

  // ------------------------------------------------------------------ tiers
  function renderTiers(chosen) {
    const box = $("tiers");
    for (const tier of state.tiers) {
      const id = "tier-" + tier.name;
      const row = el("div", "tier-choice");
      const input = el("input");
      input.type = "checkbox";
      input.id = id;
      input.value = tier.name;
      input.checked = chosen.includes(tier.name);
      const label = el("label", null, tier.name + " ");
      label.htmlFor = id;
      label.appendChild(el("span", "muted", "(d=" + tier.size + ")"));
      row.append(input, label);
      box.appendChild(row);
    }
  }

  function chosenTiers() {
    return Array.from($("tiers").querySelectorAll("input[type=checkbox]"))
      .filter((input) => input.checked)
      .map((input) => input.value);
  }

  // ------------------------------------------------------------------ history
  function addToHistory(item) {
    if (state.maxHistory !== null && state.history.length >= state.maxHistory) {
      $("search-status").textContent = "The history is full (" + state.maxHistory + " items).";
      return;
    }
    state.history.push(item);
    renderHistory();
  }

  function renderHistory() {
    const list = $("history");
    list.replaceChildren();
    state.history.forEach((item, index) => {
      const row = el("li", "history-item");
      row.dataset.item = item;
      row.appendChild(fillItem(el("span", "item"), item));
      const remove = el("button", "remove", "remove");
      remove.type = "button";
      remove.setAttribute("aria-label", "remove " + itemText(item) + " from the history");
      remove.addEventListener("click", () => {
        state.history.splice(index, 1);
        renderHistory();
      });
      row.appendChild(remove);
      list.appendChild(row);
    });
    $("history-empty").hidden = state.history.length > 0;
    $("clear").disabled = state.history.length === 0;
  }

  // ------------------------------------------------------------------ catalog search
  async function search() {
    const q = $("search").value;
    const seq = ++state.searchSeq;
    const result = await call("/items?q=" + encodeURIComponent(q) + "&limit=" + SEARCH_LIMIT);
    if (seq !== state.searchSeq) return; // a newer search was started meanwhile
    const list = $("search-results");
    list.replaceChildren();
    state.lastResults = [];
    if (!result.ok) {
      $("search-status").textContent = errorText(result);
      return;
    }
    const items = Array.isArray(result.body.items) ? result.body.items : [];
    for (const entry of items) rememberTitle(entry.id, entry.title);
    state.lastResults = items.map((entry) => String(entry.id));
    for (const item of state.lastResults) {
      const row = el("li", "search-item");
      row.dataset.item = item;
      const add = fillItem(el("button", "add"), item);
      add.type = "button";
      add.title = "add " + itemText(item) + " to the history";
      add.addEventListener("click", () => addToHistory(item));
      row.appendChild(add);
      list.appendChild(row);
    }
    const total = Number(result.body.total) || 0;
    $("search-status").textContent =
      total === 0
        ? "No item id or title contains that text."
        : total + (total === 1 ? " match" : " matches") + (total > items.length ? ", showing the first " + items.length : "") +
          ". Click one to add it; Enter adds the first.";
  }

  // Titles of history ids not seen in any answer yet (a history from the address): the exact id comes
  // first in GET /items, so one call per id, at most TITLE_LOOKUPS of them.
  async function lookUpTitles(ids) {
    const unknown = Array.from(new Set(ids)).filter((id) => !state.titles.has(id)).slice(0, TITLE_LOOKUPS);
    for (const id of unknown) {
      const result = await call("/items?q=" + encodeURIComponent(id) + "&limit=1");
      const first = result.ok && Array.isArray(result.body.items) ? result.body.items[0] : null;
      if (first && String(first.id) === id) rememberTitle(id, first.title);
    }
    return unknown.length > 0;
  }

  function scheduleSearch() {
    clearTimeout(state.searchTimer);
    state.searchTimer = setTimeout(search, SEARCH_DELAY_MS);
  }

  // ------------------------------------------------------------------ comparing tiers
  function tierColumn(name) {
    const column = el("section", "tier-result");
    column.dataset.tier = name;
    column.dataset.status = "waiting";
    const tier = state.tiers.find((t) => t.name === name);
    const head = el("h3", null, name + " ");
    if (tier) head.appendChild(el("span", "muted", "d=" + tier.size));
    column.appendChild(head);
    column.appendChild(el("p", "latency muted", "waiting\u2026"));
    return column;
  }

  function fillColumn(column, result) {
    const latency = column.querySelector(".latency");
    latency.dataset.ms = result.ms.toFixed(3);
    latency.textContent =
      result.ms.toFixed(1) + " ms" + (result.serverMs !== null ? " (model " + result.serverMs.toFixed(1) + " ms)" : "");
    if (!result.ok) {
      column.dataset.status = "error";
      column.appendChild(el("p", "error", errorText(result)));
      return;
    }
    const body = result.body;
    const items = Array.isArray(body.items) ? body.items.map(String) : [];
    const scores = Array.isArray(body.scores) ? body.scores : [];
    const titles = Array.isArray(body.titles) ? body.titles : [];
    items.forEach((item, index) => rememberTitle(item, titles[index]));
    column.dataset.status = "ok";
    column.dataset.count = String(items.length);
    const table = el("table");
    const headRow = el("tr");
    headRow.append(el("th", "rank", "#"), el("th", "item", "item"), el("th", "score", "score"));
    table.appendChild(el("thead")).appendChild(headRow);
    const tbody = el("tbody");
    items.forEach((item, index) => {
      const row = el("tr");
      row.dataset.rank = String(index + 1);
      const score = Number(scores[index]);
      const scoreCell = el("td", "score", Number.isFinite(score) ? score.toFixed(4) : String(scores[index]));
      scoreCell.dataset.score = String(scores[index]);
      row.append(el("td", "rank", index + 1), fillItem(el("td", "item"), item), scoreCell);
      tbody.appendChild(row);
    });
    table.appendChild(tbody);
    column.appendChild(table);
    const notes = [];
    if (Array.isArray(body.unknown_items) && body.unknown_items.length) {
      notes.push("not in the catalog (ignored): " + body.unknown_items.map(String).join(", "));
    }
    if (body.truncated) notes.push("history truncated to the model's input length");
    for (const note of notes) column.appendChild(el("p", "note muted", note));
  }

  async function compare() {
    const tiers = chosenTiers();
    const k = Number($("k").value);
    writeQuery();
    if (!state.history.length || !tiers.length) {
      $("status").className = "muted";
      $("status").textContent = !state.history.length ? "Add at least one item to the history." : "Pick at least one tier.";
      setState("ready");
      return;
    }
    const seq = ++state.runSeq;
    setState("running");
    $("status").className = "muted";
    $("status").textContent = "Asking " + tiers.length + (tiers.length === 1 ? " tier" : " tiers") + "\u2026";
    const results = $("results");
    results.replaceChildren();
    const columns = tiers.map((name) => results.appendChild(tierColumn(name)));
    const payload = { history: state.history.slice(), k: k, exclude_seen: $("exclude-seen").checked };
    let failed = 0;
    // one call at a time, so that each latency is that tier's alone
    for (let i = 0; i < tiers.length; i++) {
      const result = await call("/recommend", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(Object.assign({}, payload, { tier: tiers[i] })),
      });
      if (seq !== state.runSeq) return; // superseded by a newer comparison
      if (!result.ok) failed++;
      fillColumn(columns[i], result);
    }
    $("status").textContent =
      "History of " + payload.history.length + (payload.history.length === 1 ? " item" : " items") + ", k=" + k +
      (failed ? "; " + failed + " of " + tiers.length + " calls failed." : ".");
    setState("done");
  }

  // ------------------------------------------------------------------ start
  async function start() {
    const query = readQuery();
    const info = await call("/info");
    if (!info.ok) {
      $("summary").textContent = "";
      showError("Could not read the server's tiers (GET /info): " + errorText(info));
      return;
    }
    const tiers = info.body.tiers || {};
    state.tiers = Object.keys(tiers)
      .map((name) => ({ name: name, size: Number(tiers[name].size) }))
      .sort((a, b) => a.size - b.size || (a.name < b.name ? -1 : 1));
    state.defaultTier = info.body.default_tier;
    state.catalogSize = Number(info.body.catalog_size) || null;
    state.maxHistory = Number(info.body.max_history) || null;
    $("summary").textContent =
      state.tiers.length + (state.tiers.length === 1 ? " tier" : " tiers") + ", a catalog of " + state.catalogSize +
      " items. Latency: the round trip of each call, measured by this page (the model's share in brackets).";

    const known = state.tiers.map((t) => t.name);
    const unknown = query.tiers.filter((name) => !known.includes(name));
    const chosen = query.tiers.length ? query.tiers.filter((name) => known.includes(name)) : [state.defaultTier];
    renderTiers(chosen);
    const k = $("k");
    if (state.catalogSize) k.max = String(state.catalogSize);
    if (query.k !== null) k.value = query.k;
    if (query.excludeSeen === "0" || query.excludeSeen === "false") $("exclude-seen").checked = false;
    state.history = query.history.slice(0, state.maxHistory || undefined);
    renderHistory();
    if (await lookUpTitles(state.history)) renderHistory();

    $("search").value = query.q || "";
    $("search").addEventListener("input", scheduleSearch);
    $("search").addEventListener("keydown", async (event) => {
      if (event.key !== "Enter") return;
      event.preventDefault();
      clearTimeout(state.searchTimer);
      await search(); // the results of what is typed now, not of an earlier search
      if (state.lastResults.length) addToHistory(state.lastResults[0]);
    });
    $("clear").addEventListener("click", () => {
      state.history = [];
      renderHistory();
    });
    $("run").addEventListener("click", () => {
      $("notice").textContent = ""; // it was about the address the page was opened with
      compare();
    });
    await search();

    if (unknown.length) {
      $("notice").textContent = "Unknown tiers in the address: " + unknown.join(", ") + " (known: " + known.join(", ") + ")";
    }
    if (state.history.length && chosen.length) {
      await compare();
    } else {
      setState("ready");
    }
  }

  start();
})();
