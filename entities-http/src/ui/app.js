// The entities dashboard: a small single-page app over the JSON API of the same origin.
// Every value from the API is put on the page with DOM calls and text nodes; nothing that
// comes from data ever goes through innerHTML. Pages poll their data every 2 s.
'use strict';

(() => {
  const POLL_MS = 2000;
  const WINDOW_MS = 60 * POLL_MS; // the charts show the last ~60 samples
  const GAP_MS = 3 * POLL_MS; // samples further apart than this are not joined by a line
  const PAGE_SIZE = 50;
  const TOKEN_KEY = 'entities-dashboard-token';
  const STATUSES = ['Running', 'Completed', 'Failed', 'Terminated'];

  // ------------------------------------------------------------------ DOM helpers

  const $ = (id) => document.getElementById(id);

  /** Builds an element: `attrs` are attributes (`on…` functions become listeners, `value`
   *  sets the property); children are nodes or strings (as text), null/false skipped. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    const a = attrs || {};
    for (const [k, v] of Object.entries(a)) {
      if (v == null || v === false || k === 'value') continue;
      if (k.startsWith('on') && typeof v === 'function') node.addEventListener(k.slice(2), v);
      else if (k === 'class') node.className = v;
      else node.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat(Infinity)) {
      if (c == null || c === false) continue;
      node.append(c instanceof Node ? c : String(c)); // strings are appended as text
    }
    if (a.value != null) node.value = a.value; // after the children, so <select> has options
    return node;
  }

  const link = (href, text, cls) => el('a', { href, class: cls }, text);
  const enc = encodeURIComponent;
  const entityHref = (name, key) => `#/entity/${enc(name)}/${enc(key)}`;
  const instanceHref = (id) => `#/orchestration/${enc(id)}`;
  const entityPath = (name, key) => `/entities/${enc(name)}/${enc(key)}`;
  const instancePath = (id) => `/orchestrations/${enc(id)}`;

  /** `?a=1&b=2` from an object, skipping empty values; '' when nothing is left. */
  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v != null && v !== '') q.set(k, String(v));
    const s = q.toString();
    return s ? `?${s}` : '';
  }

  /** `@name@key` split into its parts (the key may hold `@`), or null. */
  function parseEntityId(id) {
    if (typeof id !== 'string' || id[0] !== '@') return null;
    const at = id.indexOf('@', 1);
    return at < 0 ? null : { name: id.slice(1, at), key: id.slice(at + 1) };
  }

  function entityLink(id) {
    const p = parseEntityId(id);
    return p ? link(entityHref(p.name, p.key), id, 'mono') : (id || '—');
  }

  const instanceLink = (id) => (id ? link(instanceHref(id), id, 'mono') : '—');

  function localTime(text) {
    if (!text) return '—';
    const d = new Date(text);
    return Number.isNaN(d.getTime()) ? String(text) : d.toLocaleString();
  }

  /** Milliseconds as `850 ms`, `1.2 s`, `3 min`, `2.5 h`. */
  function formatMs(ms) {
    if (ms == null || !Number.isFinite(ms)) return 'unknown';
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
    if (ms < 3600000) return `${Math.round(ms / 60000)} min`;
    return `${(ms / 3600000).toFixed(1)} h`;
  }

  const pretty = (v) => (v === undefined ? '' : JSON.stringify(v, null, 2));

  /** A one-line JSON preview, cut at `max` characters. */
  function preview(v, max = 80) {
    if (v === undefined) return '—';
    const s = JSON.stringify(v);
    return s.length > max ? `${s.slice(0, max - 1)}…` : s;
  }

  /** `Held` for a running instance that is held, its status otherwise. */
  const shownStatus = (i) => (i.held ? 'Held' : i.status);
  const statusBadge = (status) =>
    el('span', { class: `badge status-${String(status).toLowerCase()}` }, status);

  /** A table from header labels and rows of cells (nodes or strings). */
  function table(headers, rows, rowClass) {
    return el('div', { class: 'table-wrap' },
      el('table', {},
        el('thead', {}, el('tr', {}, headers.map((h) => el('th', {}, h)))),
        el('tbody', {}, rows.map((cells) =>
          el('tr', { class: rowClass }, cells.map((c) => el('td', {}, c)))))));
  }

  const card = (title, ...children) =>
    el('section', { class: 'card' }, title ? el('h2', {}, title) : null, ...children);

  const field = (label, input) => el('label', { class: 'field' }, el('span', {}, label), input);

  /** Rebuilds `node` from `build()` only when `data` changed since the last time (keeps
   *  scroll positions and text selections stable between polls). */
  function replaceIfChanged(node, data, build) {
    const key = JSON.stringify(data);
    if (node.dataKey === key) return;
    node.dataKey = key;
    node.replaceChildren(...[build()].flat().filter((c) => c != null));
  }

  /** Shows a result line: `kind` is 'ok', 'error' or 'pending'. */
  function showResult(node, text, kind = 'ok') {
    node.className = `result ${kind}`;
    node.replaceChildren(...[text].flat());
  }

  /** The body of a JSON input: { text } (undefined when empty) or { error }. */
  function jsonBody(raw) {
    const text = raw.trim();
    if (!text) return { text: undefined };
    try {
      JSON.parse(text);
      return { text };
    } catch (err) {
      const hint = /^[A-Za-z_][\w-]*$/.test(text) ? ` (a string needs quotes: "${text}")` : '';
      return { error: `not valid JSON: ${err.message}${hint}` };
    }
  }

  // ------------------------------------------------------------------ API access

  class ApiError extends Error {
    constructor(status, kind, message) {
      super(message);
      this.status = status;
      this.kind = kind;
    }
  }

  class NetworkError extends Error {
    constructor() {
      super('Runtime unreachable');
    }
  }

  const errorText = (err) =>
    err instanceof ApiError ? `${err.message} (${err.status} ${err.kind})` : String(err.message || err);

  /** The connection to the runtime: the red banner and the "live" mark in the header. */
  const conn = {
    lastOk: null,
    down: false,
    succeeded() {
      this.lastOk = new Date();
      this.down = false;
      $('unreachable').hidden = true;
      $('live').className = 'live ok';
      $('live').textContent = `live · ${this.lastOk.toLocaleTimeString()}`;
    },
    failed() {
      this.down = true;
      const since = this.lastOk
        ? `last successful answer at ${this.lastOk.toLocaleString()}`
        : 'no answer since the page was opened';
      $('unreachable').replaceChildren(
        el('strong', {}, 'Runtime unreachable'), ` — ${since}; retrying every ${POLL_MS / 1000} s`);
      $('unreachable').hidden = false;
      $('live').className = 'live down';
      $('live').textContent = 'unreachable';
    },
  };

  /** The bearer token (kept in sessionStorage) and its banner. */
  const auth = {
    get() {
      try { return sessionStorage.getItem(TOKEN_KEY) || ''; } catch (_) { return ''; }
    },
    set(token) {
      try { sessionStorage.setItem(TOKEN_KEY, token); } catch (_) { /* private mode */ }
    },
    required(message) {
      const banner = $('auth');
      const wasHidden = banner.hidden;
      banner.hidden = false;
      $('auth-message').textContent = message;
      if (wasHidden && document.activeElement === document.body) $('token-input').focus();
    },
    passed() {
      $('auth').hidden = true;
    },
  };

  /** One API request. Resolves to the JSON answer (or text with `text: true`); rejects with
   *  ApiError for an error status, NetworkError when the runtime does not answer. */
  async function api(path, { method = 'GET', body, text = false } = {}) {
    const headers = { Accept: text ? 'text/plain' : 'application/json' };
    const token = auth.get();
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let res;
    let raw;
    try {
      res = await fetch(path, { method, headers, body, cache: 'no-store', credentials: 'same-origin' });
      raw = await res.text();
    } catch (_) {
      conn.failed();
      throw new NetworkError();
    }
    conn.succeeded();
    let json = null;
    try { json = raw ? JSON.parse(raw) : null; } catch (_) { json = undefined; }
    if (res.status === 401) {
      auth.required(json && json.message ? json.message : 'the API answered 401');
    } else {
      auth.passed();
    }
    if (!res.ok) {
      const kind = (json && (json.error || json.kind)) || `http_${res.status}`;
      const message = (json && json.message) || raw || res.statusText;
      throw new ApiError(res.status, kind, message);
    }
    if (text) return raw;
    if (json === undefined) throw new ApiError(res.status, 'bad_answer', 'the answer is not JSON');
    return json;
  }

  /** Shows a polling error in `node`, unless the runtime is just unreachable (the banner
   *  says so and the last data stays on the page). */
  function pollError(node, err) {
    if (err instanceof NetworkError) return;
    node.dataKey = undefined;
    node.replaceChildren(el('p', { class: 'error-text' }, errorText(err)));
  }

  // ------------------------------------------------------------------ paging

  /** "First / Previous / Next page" buttons over continuation tokens; `onChange` reloads. */
  function makePager(onChange) {
    const starts = [null]; // the continuation that starts each page seen so far
    let next = null;
    const first = el('button', { type: 'button', class: 'secondary', onclick: () => go(0) }, 'First page');
    const prev = el('button', { type: 'button', class: 'secondary', onclick: () => go(starts.length - 2) }, 'Previous page');
    const nextBtn = el('button', {
      id: 'next-page', type: 'button', class: 'secondary',
      onclick: () => { if (next) { starts.push(next); onChange(); } },
    }, 'Next page');
    const label = el('span', { class: 'muted' });
    function go(index) {
      starts.length = Math.max(1, index + 1);
      onChange();
    }
    function update(continuation, count) {
      next = continuation || null;
      first.disabled = prev.disabled = starts.length === 1;
      nextBtn.disabled = !next;
      label.textContent = `page ${starts.length} · ${count} shown`;
    }
    update(null, 0);
    return {
      controls: el('div', { class: 'pager' }, first, prev, nextBtn, label),
      token: () => starts[starts.length - 1],
      update,
    };
  }

  // ------------------------------------------------------------------ overview and charts

  /** Samples of /metrics, kept across page changes; points are {t, v}, v null = gap. */
  const live = { last: null, ops: [], latency: [], p99: [] };

  /** Prometheus text format to [{name, labels, value}]. */
  function parseMetrics(textIn) {
    const out = [];
    for (const line of textIn.split('\n')) {
      const s = line.trim();
      if (!s || s[0] === '#') continue;
      const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(s);
      if (!m) continue;
      const labels = {};
      for (const l of (m[2] || '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"/g)) {
        labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
      }
      const value = m[3] === '+Inf' ? Infinity : m[3] === '-Inf' ? -Infinity : Number(m[3]);
      out.push({ name: m[1], labels, value });
    }
    return out;
  }

  /** The finite values of series `name` whose labels pass `pred`. */
  const valuesOf = (metrics, name, pred) => metrics
    .filter((m) => m.name === name && (!pred || pred(m.labels)) && Number.isFinite(m.value))
    .map((m) => m.value);
  const sumOrNull = (vs) => (vs.length ? vs.reduce((a, b) => a + b, 0) : null);

  function pushPoint(series, t, v) {
    series.push({ t, v });
    while (series.length && series[0].t < t - WINDOW_MS - GAP_MS) series.shift();
  }

  /** Adds one /metrics sample: rates are deltas against the previous sample. */
  function addSample(metrics) {
    const t = Date.now();
    const p99s = valuesOf(metrics, 'entities_commit_seconds', (l) => l.quantile === '0.99');
    const s = {
      t,
      ops: sumOrNull(valuesOf(metrics, 'entities_operations_total')) || 0,
      sum: sumOrNull(valuesOf(metrics, 'entities_commit_seconds_sum')),
      count: sumOrNull(valuesOf(metrics, 'entities_commit_seconds_count')),
      p99: p99s.length ? Math.max(...p99s) * 1000 : null,
    };
    const prev = live.last;
    live.last = s;
    if (!prev || t - prev.t > GAP_MS) return; // the first sample (or after a pause) is a baseline
    const dt = (t - prev.t) / 1000;
    const dOps = s.ops - prev.ops;
    pushPoint(live.ops, t, dOps >= 0 && dt > 0 ? dOps / dt : null); // negative: counters reset
    let latency = null;
    if (s.count != null && prev.count != null && s.count > prev.count) {
      latency = ((s.sum - prev.sum) / (s.count - prev.count)) * 1000;
    }
    pushPoint(live.latency, t, latency);
    pushPoint(live.p99, t, s.p99);
  }

  const lastValue = (series) => (series.length ? series[series.length - 1].v : undefined);
  const fmtNum = (v) => (v < 10 ? v.toFixed(v < 1 && v > 0 ? 2 : 1) : v < 100 ? v.toFixed(1) : String(Math.round(v)));

  /** 1, 2 or 5 times a power of ten, at least `x`. */
  function niceCeil(x) {
    if (!(x > 0)) return 1;
    const e = 10 ** Math.floor(Math.log10(x));
    const f = x / e;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * e;
  }

  /** A line chart of the last WINDOW_MS: `lines` are {points, color}. */
  function drawChart(canvas, lines) {
    const dpr = window.devicePixelRatio || 1;
    const cssW = canvas.clientWidth || 500;
    const cssH = canvas.clientHeight || 160;
    if (canvas.width !== Math.round(cssW * dpr)) canvas.width = Math.round(cssW * dpr);
    if (canvas.height !== Math.round(cssH * dpr)) canvas.height = Math.round(cssH * dpr);
    const ctx = canvas.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, cssW, cssH);
    const pad = { l: 46, r: 10, t: 8, b: 20 };
    const w = cssW - pad.l - pad.r;
    const h = cssH - pad.t - pad.b;
    const t0 = Date.now() - WINDOW_MS;
    let max = 0;
    for (const line of lines) for (const p of line.points) if (p.v != null && p.t >= t0) max = Math.max(max, p.v);
    const top = niceCeil(max);
    // The grid and its labels.
    ctx.font = '11px system-ui, sans-serif';
    ctx.lineWidth = 1;
    ctx.strokeStyle = '#e5e7eb';
    ctx.fillStyle = '#6b7280';
    ctx.textAlign = 'right';
    ctx.textBaseline = 'middle';
    for (let i = 0; i <= 4; i++) {
      const y = Math.round(pad.t + h - (h * i) / 4) + 0.5;
      ctx.beginPath();
      ctx.moveTo(pad.l, y);
      ctx.lineTo(pad.l + w, y);
      ctx.stroke();
      ctx.fillText(String(Number(((top * i) / 4).toPrecision(3))), pad.l - 6, y);
    }
    ctx.textBaseline = 'top';
    ctx.textAlign = 'left';
    ctx.fillText(`−${WINDOW_MS / 60000} min`, pad.l, pad.t + h + 5);
    ctx.textAlign = 'right';
    ctx.fillText('now', pad.l + w, pad.t + h + 5);
    // The lines, clipped to the plot.
    ctx.save();
    ctx.beginPath();
    ctx.rect(pad.l, pad.t - 2, w, h + 4);
    ctx.clip();
    const xy = (p) => [pad.l + ((p.t - t0) / WINDOW_MS) * w, pad.t + h - (Math.min(p.v, top) / top) * h];
    for (const line of lines) {
      ctx.strokeStyle = ctx.fillStyle = line.color;
      ctx.lineWidth = 2;
      ctx.lineJoin = 'round';
      ctx.beginPath();
      let prev = null;
      for (const p of line.points) {
        if (p.v == null) { prev = null; continue; }
        const [x, y] = xy(p);
        if (prev && p.t - prev.t <= GAP_MS) ctx.lineTo(x, y); else ctx.moveTo(x, y);
        prev = p;
      }
      ctx.stroke();
      const last = line.points[line.points.length - 1];
      if (last && last.v != null) {
        const [x, y] = xy(last);
        ctx.beginPath();
        ctx.arc(x, y, 3, 0, 2 * Math.PI);
        ctx.fill();
      }
    }
    ctx.restore();
  }

  function overviewPage() {
    const entities = el('div', {}, 'loading…');
    const orchestrations = el('div', {}, 'loading…');
    const locked = el('div', {}, 'loading…');
    const messages = el('div', {}, 'loading…');
    const failures = el('div', {}, 'loading…');
    const failed = el('div', {}, 'loading…');
    const opsText = el('span', { id: 'ops-per-second', class: 'figure' }, '…');
    const latencyText = el('span', { id: 'commit-latency', class: 'figure' }, '…');
    const opsCanvas = el('canvas', { class: 'chart', 'aria-label': 'operations per second' });
    const latCanvas = el('canvas', { class: 'chart', 'aria-label': 'commit latency' });
    const legend = el('div', { class: 'legend' },
      el('span', { class: 'key key-avg' }, 'average'), el('span', { class: 'key key-p99' }, 'p99'));

    const root = el('div', { id: 'page-overview' },
      el('h1', {}, 'Overview'),
      el('div', { class: 'grid grid-4' },
        card('Entities', entities), card('Orchestrations', orchestrations),
        card('Critical sections', locked), card('Messages', messages)),
      el('div', { class: 'grid grid-2' },
        card('Operations per second', el('div', { class: 'figure-line' }, opsText), opsCanvas),
        card('Commit latency', el('div', { class: 'figure-line' }, latencyText, legend), latCanvas)),
      card('Recent failures', failures),
      card('Failed orchestrations', failed));

    function renderStats(st) {
      replaceIfChanged(entities, st.entities, () => {
        const list = [...(st.entities || [])].sort((a, b) => a.name.localeCompare(b.name));
        if (!list.length) return el('p', { class: 'muted' }, 'no entities stored yet');
        const total = list.reduce((n, e) => n + e.count, 0);
        return [
          el('ul', { class: 'kv scroll' }, list.map((e) => el('li', {},
            link(`#/entities${query({ name: e.name })}`, e.name), el('span', { class: 'count' }, e.count)))),
          el('div', { class: 'muted total' }, `${total} in all`),
        ];
      });
      replaceIfChanged(orchestrations, [st.orchestrations, st.held_orchestrations], () => {
        // Held instances are running ones whose code departed from their history.
        const counts = { ...(st.orchestrations || {}), Held: st.held_orchestrations ?? 0 };
        const shown = ['Running', 'Held', ...STATUSES.slice(1)];
        const names = [...shown, ...Object.keys(counts).filter((s) => !shown.includes(s))];
        return el('ul', { class: 'kv' }, names.map((s) => el('li', {},
          el('a', { href: `#/orchestrations${query({ status: s.toLowerCase() })}` }, statusBadge(s)),
          el('span', { class: 'count' }, counts[s] ?? 0))));
      });
      replaceIfChanged(locked, st.locked_entities, () => [
        el('a', { href: '#/locks', class: 'big-number' }, String(st.locked_entities ?? 0)),
        el('div', { class: 'muted' }, 'entities locked by critical sections'),
      ]);
      replaceIfChanged(messages, [st.stored_messages, st.scheduled_messages], () =>
        el('ul', { class: 'kv' },
          el('li', {}, 'stored, not yet processed', el('span', { class: 'count' }, st.stored_messages ?? 0)),
          el('li', {}, 'scheduled for later', el('span', { class: 'count' }, st.scheduled_messages ?? 0))));
      replaceIfChanged(failures, st.recent_failures, () => {
        const list = st.recent_failures || [];
        if (!list.length) return el('p', { class: 'muted' }, 'no operation failed lately');
        return table(['When', 'Entity', 'Operation', 'Instance', 'Message'], list.map((f) => [
          localTime(f.at),
          f.entity ? entityLink(f.entity) : '—',
          f.operation ? el('code', {}, f.operation) : '—',
          instanceLink(f.instance),
          el('span', { class: 'error-text' }, f.message ?? ''),
        ]));
      });
    }

    function renderFailed(page) {
      const list = [...(page.instances || [])].sort((a, b) => String(b.updated).localeCompare(String(a.updated)));
      replaceIfChanged(failed, list, () => {
        if (!list.length) return el('p', { class: 'muted' }, 'no failed orchestration');
        return [
          table(['Updated', 'Instance', 'Name', 'Error'], list.map((i) => [
            localTime(i.updated), instanceLink(i.id), i.name,
            el('span', { class: 'error-text' }, typeof i.error === 'string' ? i.error : preview(i.error, 120)),
          ])),
          el('p', {}, link('#/orchestrations?status=failed', 'all failed orchestrations')),
        ];
      });
    }

    function renderLive() {
      const ops = lastValue(live.ops);
      opsText.textContent = ops == null ? (ops === undefined ? '…' : '—') : `${fmtNum(ops)} ops/s`;
      const lat = lastValue(live.latency);
      const p99 = lastValue(live.p99);
      if (lat === undefined) latencyText.textContent = '…';
      else if (lat == null) latencyText.textContent = 'no commits in the last sample';
      else latencyText.textContent = `${fmtNum(lat)} ms average${p99 != null ? ` · p99 ${fmtNum(p99)} ms` : ''}`;
      drawChart(opsCanvas, [{ points: live.ops, color: '#2563eb' }]);
      drawChart(latCanvas, [{ points: live.p99, color: '#f59e0b' }, { points: live.latency, color: '#2563eb' }]);
    }

    async function refresh() {
      await Promise.all([
        api('/stats').then(renderStats, (err) => { pollError(entities, err); pollError(failures, err); }),
        api('/orchestrations?status=failed&page_size=5').then(renderFailed, (err) => pollError(failed, err)),
        api('/metrics', { text: true }).then((t) => addSample(parseMetrics(t)), () => {}),
      ]);
      renderLive();
    }

    return { root, refresh, title: 'Overview', nav: 'overview', redraw: renderLive };
  }

  // ------------------------------------------------------------------ entities

  function entitiesPage(params) {
    const name = params.get('name') || '';
    const prefix = params.get('prefix') || '';
    const nameInput = el('input', { id: 'filter-name', value: name, placeholder: 'any', list: 'entity-names', autocomplete: 'off' });
    const prefixInput = el('input', { id: 'filter-prefix', value: prefix, placeholder: 'any', autocomplete: 'off' });
    const names = el('datalist', { id: 'entity-names' });
    const form = el('form', {
      class: 'filters',
      onsubmit: (e) => {
        e.preventDefault();
        navigate(`#/entities${query({ name: nameInput.value.trim(), prefix: prefixInput.value })}`);
      },
    }, field('Name', nameInput), field('Key prefix', prefixInput),
    el('button', { id: 'filter-apply', type: 'submit' }, 'Apply'), names);
    const list = el('div', {}, 'loading…');
    const page = { title: 'Entities', nav: 'entities' };
    const pager = makePager(() => kick(page));
    page.root = el('div', { id: 'page-entities' }, el('h1', {}, 'Entities'),
      card(null, form), card(null, list, pager.controls));

    // The names for the filter's suggestions, once.
    api('/stats').then((st) => names.replaceChildren(
      ...(st.entities || []).map((e) => el('option', { value: e.name }))), () => {});

    page.refresh = async () => {
      try {
        const res = await api(`/entities${query({ name, prefix, page_size: PAGE_SIZE, continuation: pager.token() })}`);
        const items = res.entities || [];
        pager.update(res.continuation, items.length);
        replaceIfChanged(list, items, () => {
          if (!items.length) return el('p', { class: 'muted' }, 'no entity with state matches');
          return table(['Key', 'Name', 'State', 'Last modified', 'Locked by', 'Waiting'], items.map((e) => [
            link(entityHref(e.name, e.key), e.key, 'mono'),
            e.name,
            el('code', { class: 'preview', title: preview(e.state, 2000) }, preview(e.state)),
            localTime(e.last_modified),
            e.locked_by ? instanceLink(e.locked_by) : el('span', { class: 'muted' }, '—'),
            String(e.pending_messages ?? 0),
          ]));
        });
      } catch (err) {
        pollError(list, err);
      }
    };
    return page;
  }

  function entityPage(name, key) {
    const page = { title: `${name} / ${key}`, nav: 'entities' };
    const statePre = el('pre', { id: 'entity-state', class: 'json' }, 'loading…');
    const note = el('p', { class: 'muted' });
    const modified = el('span', { id: 'entity-modified' }, '…');
    const lock = el('span', { id: 'entity-lock' }, '…');
    const pending = el('span', { id: 'entity-pending' }, '…');

    // Operations: signal or call.
    const opName = el('input', { id: 'op-name', placeholder: 'e.g. deposit', autocomplete: 'off', spellcheck: 'false' });
    const opInput = el('textarea', { id: 'op-input', rows: 3, placeholder: 'JSON input; empty for none', spellcheck: 'false' });
    const opResult = el('pre', { id: 'op-result', class: 'result' });
    let opSeq = 0;
    async function runOperation(call) {
      const seq = ++opSeq;
      const op = opName.value.trim();
      if (!op) return showResult(opResult, 'enter an operation name', 'error');
      const body = jsonBody(opInput.value);
      if (body.error) return showResult(opResult, body.error, 'error');
      showResult(opResult, call ? `calling ${op}…` : `signalling ${op}…`, 'pending');
      const path = `${entityPath(name, key)}/${enc(op)}${call ? '' : '/send'}`;
      try {
        const result = await api(path, { method: 'POST', body: body.text });
        if (seq === opSeq) showResult(opResult, call ? pretty(result) : 'signal stored (202)');
      } catch (err) {
        if (seq === opSeq) showResult(opResult, errorText(err), 'error');
      }
      soon(page);
    }
    const opForm = el('form', { class: 'stack', onsubmit: (e) => e.preventDefault() },
      field('Operation', opName), field('Input (JSON)', opInput),
      el('div', { class: 'buttons' },
        el('button', { id: 'op-signal', type: 'button', onclick: () => runOperation(false) }, 'Signal'),
        el('button', { id: 'op-call', type: 'button', onclick: () => runOperation(true) }, 'Call'),
        el('span', { class: 'muted' }, 'Signal queues the operation (202); Call waits for its result.')),
      opResult);

    // The state editor: refilled from the polled state only while the user is not editing.
    const editor = el('textarea', { id: 'state-editor', rows: 8, spellcheck: 'false' });
    const stateResult = el('pre', { id: 'state-result', class: 'result' });
    const changedHint = el('span', { class: 'muted' });
    let dirty = false;
    let latest = ''; // the last state seen, formatted
    editor.addEventListener('input', () => { dirty = true; });
    let base = null; // the state the editor was last filled with
    function fillEditor(force) {
      if (force || (!dirty && document.activeElement !== editor)) {
        if (editor.value !== latest) editor.value = latest;
        base = latest;
        dirty = false;
      }
      changedHint.textContent = base !== null && base !== latest
        ? 'the state changed since the editor was filled (Reload shows it)' : '';
    }
    async function saveState() {
      const body = jsonBody(editor.value);
      if (body.error) return showResult(stateResult, body.error, 'error');
      if (body.text === undefined) {
        return showResult(stateResult, 'the new state must be JSON (to remove the state, call `delete`)', 'error');
      }
      showResult(stateResult, 'saving…', 'pending');
      try {
        await api(entityPath(name, key), { method: 'PUT', body: body.text });
        showResult(stateResult, 'state saved');
        dirty = false;
      } catch (err) {
        showResult(stateResult, errorText(err), 'error');
      }
      soon(page);
    }
    const stateForm = el('form', { class: 'stack', onsubmit: (e) => { e.preventDefault(); saveState(); } },
      editor,
      el('div', { class: 'buttons' },
        el('button', { id: 'state-save', type: 'submit' }, 'Save state'),
        el('button', { type: 'button', class: 'secondary', onclick: () => fillEditor(true) }, 'Reload'),
        changedHint),
      stateResult);

    // Scheduled one-off signals and recurring schedules, each with a button to cancel it.
    const scheduledBox = el('div', { id: 'entity-scheduled' }, 'loading…');
    const scheduledResult = el('pre', { id: 'scheduled-result', class: 'result' });
    const scheduledPath = `/scheduled/${enc(name)}/${enc(key)}`;
    async function cancelScheduled(kind, id) {
      showResult(scheduledResult, `cancelling ${kind} ${id}…`, 'pending');
      try {
        await api(`${scheduledPath}/${kind === 'signal' ? 'signals' : 'schedules'}/${enc(String(id))}`,
          { method: 'DELETE' });
        showResult(scheduledResult, `${kind} ${id} cancelled`);
      } catch (err) {
        showResult(scheduledResult, errorText(err), 'error');
      }
      soon(page);
    }
    function renderScheduled(s) {
      const when = (x) => (x.every_ms != null ? `every ${formatMs(x.every_ms)}` : `cron ${x.cron ?? '?'}`);
      const rows = [
        ...(s.signals || []).map((x) => ['signal', x.operation, preview(x.input), localTime(x.due),
          el('button', { type: 'button', class: 'secondary', onclick: () => cancelScheduled('signal', x.id) }, 'Cancel')]),
        ...(s.schedules || []).map((x) => ['schedule', x.operation, preview(x.input),
          `${when(x.schedule || {})}, next ${localTime(x.next_fire)}`,
          el('button', { type: 'button', class: 'secondary', onclick: () => cancelScheduled('schedule', x.id) }, 'Stop')]),
      ];
      if (!rows.length) return el('p', { class: 'muted' }, 'nothing scheduled');
      return table(['Kind', 'Operation', 'Input', 'When', ''], rows);
    }

    page.root = el('div', { id: 'page-entity' },
      el('div', { class: 'crumbs' }, link('#/entities', 'Entities'), ' › ',
        link(`#/entities${query({ name })}`, name), ' › '),
      el('h1', { class: 'mono' }, el('span', { class: 'muted' }, `${name} / `), key),
      el('div', { class: 'grid grid-2' },
        card('State', statePre, note),
        card('Details', el('dl', { class: 'details' },
          el('dt', {}, 'Name'), el('dd', {}, name),
          el('dt', {}, 'Key'), el('dd', { class: 'mono' }, key),
          el('dt', {}, 'Last modified'), el('dd', {}, modified),
          el('dt', {}, 'Locked by'), el('dd', {}, lock),
          el('dt', {}, 'Messages waiting'), el('dd', {}, pending)),
        card('Scheduled', scheduledBox, scheduledResult))),
      el('div', { class: 'grid grid-2' },
        card('Run an operation', opForm),
        card('Edit the state', stateForm)));

    page.refresh = async () => {
      let e = null;
      try {
        e = await api(entityPath(name, key));
        note.textContent = '';
      } catch (err) {
        if (!(err instanceof ApiError && err.status === 404)) {
          if (!(err instanceof NetworkError)) note.textContent = errorText(err);
          return;
        }
        note.textContent = err.message; // e.g. "@account@x has no state"
      }
      if (e) {
        statePre.textContent = pretty(e.state);
        statePre.classList.remove('muted');
        modified.textContent = localTime(e.last_modified);
        lock.replaceChildren(e.locked_by ? instanceLink(e.locked_by) : 'not locked');
        pending.textContent = String(e.pending_messages ?? 0);
        latest = pretty(e.state);
      } else {
        statePre.textContent = 'no state';
        statePre.classList.add('muted');
        modified.textContent = '—';
        lock.textContent = 'not locked';
        pending.textContent = '0';
        latest = '';
      }
      fillEditor(false);
      try {
        const scheduled = await api(scheduledPath);
        replaceIfChanged(scheduledBox, scheduled, () => renderScheduled(scheduled));
      } catch (err) {
        if (!(err instanceof NetworkError)) scheduledBox.textContent = errorText(err);
      }
    };
    return page;
  }

  // ------------------------------------------------------------------ orchestrations

  function orchestrationsPage(params) {
    const status = (params.get('status') || '').toLowerCase();
    const name = params.get('name') || '';
    const statusSelect = el('select', { id: 'filter-status', value: status },
      el('option', { value: '' }, 'all'),
      ['Running', 'Held', ...STATUSES.slice(1)].map((s) => el('option', { value: s.toLowerCase() }, s.toLowerCase())));
    const nameInput = el('input', { id: 'filter-orch-name', value: name, placeholder: 'any', autocomplete: 'off' });
    const filters = el('form', {
      class: 'filters',
      onsubmit: (e) => {
        e.preventDefault();
        navigate(`#/orchestrations${query({ status: statusSelect.value, name: nameInput.value.trim() })}`);
      },
    }, field('Status', statusSelect), field('Name', nameInput),
    el('button', { id: 'filter-apply', type: 'submit' }, 'Apply'));

    // Starting an instance.
    const startName = el('input', { id: 'start-name', placeholder: 'orchestration name', autocomplete: 'off' });
    const startId = el('input', { id: 'start-id', placeholder: 'optional', autocomplete: 'off' });
    const startInput = el('textarea', { id: 'start-input', rows: 2, placeholder: 'JSON input; empty for null', spellcheck: 'false' });
    const startResult = el('div', { id: 'start-result', class: 'result' });
    async function start() {
      const n = startName.value.trim();
      if (!n) return showResult(startResult, 'enter the orchestration name', 'error');
      const body = jsonBody(startInput.value);
      if (body.error) return showResult(startResult, body.error, 'error');
      showResult(startResult, 'starting…', 'pending');
      try {
        const res = await api(`/orchestrations/${enc(n)}${query({ id: startId.value.trim() })}`, { method: 'POST', body: body.text });
        showResult(startResult, ['started ', instanceLink(res && res.id)]);
      } catch (err) {
        showResult(startResult, errorText(err), 'error');
      }
      soon(page);
    }
    const startForm = el('form', { class: 'stack', onsubmit: (e) => { e.preventDefault(); start(); } },
      el('div', { class: 'row' }, field('Name', startName), field('Instance id', startId)),
      field('Input (JSON)', startInput),
      el('div', { class: 'buttons' }, el('button', { id: 'start-submit', type: 'submit' }, 'Start')),
      startResult);

    const list = el('div', {}, 'loading…');
    const page = { title: 'Orchestrations', nav: 'orchestrations' };
    const pager = makePager(() => kick(page));
    page.root = el('div', { id: 'page-orchestrations' }, el('h1', {}, 'Orchestrations'),
      el('div', { class: 'grid grid-2' }, card('Filter', filters), card('Start an instance', startForm)),
      card(null, list, pager.controls));

    page.refresh = async () => {
      try {
        const res = await api(`/orchestrations${query({ status, name, page_size: PAGE_SIZE, continuation: pager.token() })}`);
        const items = res.instances || [];
        pager.update(res.continuation, items.length);
        replaceIfChanged(list, items, () => {
          if (!items.length) return el('p', { class: 'muted' }, 'no instance matches');
          return table(['Instance', 'Name', 'Status', 'Created', 'Updated'], items.map((i) => [
            instanceLink(i.id), i.name, statusBadge(shownStatus(i)), localTime(i.created), localTime(i.updated),
          ]));
        });
      } catch (err) {
        pollError(list, err);
      }
    };
    return page;
  }

  /** The kind of a serde externally tagged value: the string itself or the single key. */
  function tagOf(v) {
    if (typeof v === 'string') return v;
    if (v && typeof v === 'object' && !Array.isArray(v)) {
      const keys = Object.keys(v);
      if (keys.length === 1) return keys[0];
    }
    return null;
  }

  function eventClass(label) {
    if (/Lock|Release/.test(label)) return 'ev-lock';
    if (/Entity|Call|Signal/.test(label)) return 'ev-entity';
    if (/Timer/.test(label)) return 'ev-timer';
    if (/Event|Raised/.test(label)) return 'ev-event';
    if (/Activity/.test(label)) return 'ev-activity';
    return 'ev-step';
  }

  /** The history as a timeline: kind in bold (with the scheduled step's kind, matched by
   *  `seq` for completions), then the fields as compact JSON. */
  function renderHistory(events) {
    if (!events.length) return el('li', { class: 'muted' }, 'no events yet');
    const steps = new Map(); // seq -> kind of the step scheduled
    return events.map((ev, i) => {
      const kind = tagOf(ev) || 'event';
      const body = typeof ev === 'string' ? undefined : (tagOf(ev) ? ev[kind] : ev);
      let step = null;
      let failed = false;
      let when = null;
      if (body && typeof body === 'object' && !Array.isArray(body)) {
        if ('action' in body) step = tagOf(body.action);
        if (typeof body.seq === 'number') {
          if (step) steps.set(body.seq, step); else step = steps.get(body.seq) || null;
        }
        if ('result' in body && tagOf(body.result) === 'Err') failed = true;
        if (typeof body.time === 'number' && body.time > 1e11) when = new Date(body.time).toLocaleString();
      }
      const label = step ? `${kind} · ${step}` : kind;
      let fields = body === undefined ? '' : JSON.stringify(body);
      if (fields.length > 2000) fields = `${fields.slice(0, 1999)}…`;
      return el('li', { class: `ev ${eventClass(label)}${failed ? ' ev-failed' : ''}` },
        el('div', { class: 'ev-head' },
          el('span', { class: 'ev-index' }, `#${i + 1}`), el('strong', {}, label),
          when && el('span', { class: 'muted' }, when), failed && el('span', { class: 'badge status-failed' }, 'error')),
        fields && el('code', { class: 'ev-fields' }, fields));
    });
  }

  /** Fills a <pre> with a JSON value, or "none". */
  function showJson(pre, v, asText) {
    const none = v == null;
    pre.classList.toggle('muted', none);
    pre.textContent = none ? 'none' : asText && typeof v === 'string' ? v : pretty(v);
  }

  function orchestrationPage(id) {
    const page = { title: id, nav: 'orchestrations' };
    const summary = el('div', {}, 'loading…');
    const input = el('pre', { id: 'orch-input', class: 'json' }, '…');
    const output = el('pre', { id: 'orch-output', class: 'json' }, '…');
    const error = el('pre', { id: 'orch-error', class: 'json error-text' }, '…');
    const history = el('ol', { id: 'history', class: 'timeline' }, el('li', { class: 'muted' }, 'loading…'));

    // Raising an event.
    const eventName = el('input', { id: 'event-name', placeholder: 'e.g. approval', autocomplete: 'off' });
    const eventData = el('textarea', { id: 'event-data', rows: 2, placeholder: 'JSON data; empty for null', spellcheck: 'false' });
    const eventResult = el('div', { id: 'event-result', class: 'result' });
    async function raise() {
      const n = eventName.value.trim();
      if (!n) return showResult(eventResult, 'enter the event name', 'error');
      const body = jsonBody(eventData.value);
      if (body.error) return showResult(eventResult, body.error, 'error');
      try {
        await api(`${instancePath(id)}/events/${enc(n)}`, { method: 'POST', body: body.text });
        showResult(eventResult, `event ${n} raised (202)`);
      } catch (err) {
        showResult(eventResult, errorText(err), 'error');
      }
      soon(page);
    }

    // Terminating and purging.
    const reason = el('input', { id: 'terminate-reason', placeholder: 'reason', autocomplete: 'off' });
    const terminateResult = el('div', { id: 'terminate-result', class: 'result' });
    async function terminate() {
      const r = reason.value.trim();
      showResult(terminateResult, 'requesting…', 'pending');
      try {
        await api(`${instancePath(id)}/terminate`, { method: 'POST', body: r ? JSON.stringify(r) : undefined });
        showResult(terminateResult, 'termination requested (202)');
      } catch (err) {
        showResult(terminateResult, errorText(err), 'error');
      }
      soon(page);
    }
    const purgeResult = el('div', { id: 'purge-result', class: 'result' });
    async function purge() {
      if (!window.confirm(`Purge instance ${id} and its history? This cannot be undone.`)) return;
      try {
        await api(instancePath(id), { method: 'DELETE' });
        navigate('#/orchestrations');
      } catch (err) {
        showResult(purgeResult, errorText(err), 'error');
      }
    }

    const actions = el('div', { class: 'stack' },
      el('form', { class: 'stack', onsubmit: (e) => { e.preventDefault(); raise(); } },
        el('h3', {}, 'Raise an event'), field('Event', eventName), field('Data (JSON)', eventData),
        el('div', { class: 'buttons' }, el('button', { id: 'event-raise', type: 'submit' }, 'Raise event')),
        eventResult),
      el('form', { class: 'stack', onsubmit: (e) => { e.preventDefault(); terminate(); } },
        el('h3', {}, 'Terminate'), field('Reason', reason),
        el('div', { class: 'buttons' }, el('button', { id: 'orch-terminate', type: 'submit', class: 'danger' }, 'Terminate')),
        terminateResult),
      el('div', { class: 'stack' },
        el('h3', {}, 'Purge'),
        el('p', { class: 'muted' }, 'Removes an ended instance and its history.'),
        el('div', { class: 'buttons' }, el('button', { id: 'orch-purge', type: 'button', class: 'danger', onclick: purge }, 'Purge')),
        purgeResult));

    page.root = el('div', { id: 'page-orchestration' },
      el('div', { class: 'crumbs' }, link('#/orchestrations', 'Orchestrations'), ' › '),
      el('h1', { class: 'mono' }, id),
      el('div', { class: 'grid grid-2' },
        el('div', { class: 'stack' },
          card('Instance', summary), card('Input', input), card('Output', output), card('Error', error)),
        card('Actions', actions)),
      card('History', history));

    async function loadStatus() {
      try {
        const s = await api(instancePath(id));
        replaceIfChanged(summary, s, () => el('dl', { class: 'details' },
          el('dt', {}, 'Status'), el('dd', {}, statusBadge(shownStatus(s))),
          s.held && el('dt', {}, 'Held'), s.held && el('dd', { id: 'held-reason' }, s.held),
          el('dt', {}, 'Name'), el('dd', {}, s.name),
          el('dt', {}, 'Created'), el('dd', {}, localTime(s.created)),
          el('dt', {}, 'Updated'), el('dd', {}, localTime(s.updated))));
        showJson(input, s.input);
        showJson(output, s.output);
        showJson(error, s.error, true);
      } catch (err) {
        pollError(summary, err);
      }
    }
    async function loadHistory() {
      try {
        const h = await api(`${instancePath(id)}/history`);
        replaceIfChanged(history, h.events, () => renderHistory(h.events || []));
      } catch (err) {
        if (!(err instanceof NetworkError)) {
          history.dataKey = undefined;
          history.replaceChildren(el('li', { class: 'error-text' }, errorText(err)));
        }
      }
    }
    page.refresh = () => Promise.all([loadStatus(), loadHistory()]);
    return page;
  }

  // ------------------------------------------------------------------ locks

  function locksPage() {
    const list = el('div', { class: 'stack' }, 'loading…');
    const page = { title: 'Locks', nav: 'locks' };
    page.root = el('div', { id: 'page-locks' }, el('h1', {}, 'Locks'),
      el('p', { class: 'muted' }, 'Entities held by critical sections, and what waits behind them.'),
      list);

    function waitingItem(w) {
      const what = w.kind === 'lock' || !w.operation
        ? el('strong', {}, 'lock request')
        : [el('code', {}, w.operation), w.call === true ? ' (call)' : w.call === false ? ' (signal)' : ''];
      const from = w.sender ? ['from ', instanceLink(w.sender)] : 'from a client';
      const wait = w.waiting_ms == null ? 'waiting since before this process knew the lock' : `waiting ${formatMs(w.waiting_ms)}`;
      return el('li', {}, what, ' ', from, el('span', { class: 'muted' }, ` · ${wait}`));
    }

    function heldEntity(l) {
      const waiting = l.waiting || [];
      return el('div', { class: 'lock' },
        el('div', { class: 'lock-head' },
          link(entityHref(l.name, l.key), l.id || `@${l.name}@${l.key}`, 'mono'),
          el('span', { class: 'muted' }, waiting.length ? `${waiting.length} waiting` : 'nothing waiting')),
        waiting.length ? el('ul', { class: 'waiting' }, waiting.map(waitingItem)) : null);
    }

    page.refresh = async () => {
      try {
        const locks = await api('/locks');
        const byOwner = new Map();
        for (const l of locks || []) {
          const owner = l.owner ?? '';
          if (!byOwner.has(owner)) byOwner.set(owner, []);
          byOwner.get(owner).push(l);
        }
        replaceIfChanged(list, locks, () => {
          if (!byOwner.size) return el('p', { class: 'empty' }, 'no critical section is held now');
          return [...byOwner].map(([owner, held]) => el('section', { class: 'card section-card' },
            el('h2', {}, 'Critical section of ', owner ? instanceLink(owner) : 'an unknown owner'),
            el('p', { class: 'muted' }, `holds ${held.length} ${held.length === 1 ? 'entity' : 'entities'}`),
            held.map(heldEntity)));
        });
      } catch (err) {
        pollError(list, err);
      }
    };
    return page;
  }

  function notFoundPage(path) {
    return {
      title: 'Not found',
      nav: null,
      root: el('div', { id: 'page-notfound' }, el('h1', {}, 'No such page'),
        el('p', {}, 'Nothing is shown at ', el('code', {}, `#${path}`), '. ', link('#/', 'Back to the overview'))),
      refresh: async () => {},
    };
  }

  // ------------------------------------------------------------------ routing and polling

  let current = null;

  function safeDecode(s) {
    try { return decodeURIComponent(s); } catch (_) { return s; }
  }

  /** The page for the current hash. Read from href: location.hash may come back decoded. */
  function pageFor() {
    const href = window.location.href;
    const hash = href.includes('#') ? href.slice(href.indexOf('#') + 1) : '/';
    const q = hash.indexOf('?');
    const path = q < 0 ? hash : hash.slice(0, q);
    const params = new URLSearchParams(q < 0 ? '' : hash.slice(q + 1));
    const seg = path.split('/').filter((s) => s !== '').map(safeDecode);
    if (seg.length === 0) return overviewPage();
    if (seg[0] === 'entities' && seg.length === 1) return entitiesPage(params);
    if (seg[0] === 'entity' && seg.length >= 3) return entityPage(seg[1], seg.slice(2).join('/'));
    if (seg[0] === 'orchestrations' && seg.length === 1) return orchestrationsPage(params);
    if (seg[0] === 'orchestration' && seg.length >= 2) return orchestrationPage(seg.slice(1).join('/'));
    if (seg[0] === 'locks' && seg.length === 1) return locksPage();
    return notFoundPage(path);
  }

  function route() {
    const page = pageFor();
    current = page;
    page.busy = false;
    page.again = false;
    document.title = `${page.title} · entities`;
    for (const a of document.querySelectorAll('#nav a')) {
      a.classList.toggle('active', a.dataset.route === page.nav);
    }
    $('page').replaceChildren(page.root);
    window.scrollTo(0, 0);
    kick(page);
  }

  /** Goes to `hash`; routes again when it is the current one (e.g. the same filter). */
  function navigate(hash) {
    const before = window.location.href;
    window.location.hash = hash;
    if (window.location.href === before) route();
  }

  /** Refreshes `page` if it is still shown; a refresh asked for during one runs after it. */
  async function kick(page) {
    if (!page || page !== current) return;
    if (page.busy) { page.again = true; return; }
    page.busy = true;
    try {
      do {
        page.again = false;
        await page.refresh();
      } while (page.again && page === current);
    } catch (err) {
      console.error(err);
    } finally {
      page.busy = false;
    }
  }

  /** A refresh shortly after an action, to show its effect. */
  const soon = (page) => setTimeout(() => kick(page), 300);

  function start() {
    $('auth-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const token = $('token-input').value.trim();
      if (!/^[\x21-\x7e]+$/.test(token)) {
        $('auth-message').textContent = 'a token is printable ASCII without spaces';
        return;
      }
      auth.set(token);
      $('token-input').value = '';
      auth.passed();
      kick(current);
    });
    window.addEventListener('hashchange', route);
    window.addEventListener('resize', () => { if (current && current.redraw) current.redraw(); });
    document.addEventListener('visibilitychange', () => { if (!document.hidden) kick(current); });
    setInterval(() => { if (!document.hidden) kick(current); }, POLL_MS);
    route();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
