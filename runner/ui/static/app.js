// runner ui: plain ES module, no dependencies. The form is generated from the config JSON Schema
// (GET /api/schema); edits go through the server (/api/set) so the YAML keeps its comments, and
// every YAML change is linted by the CLI's own code (/api/lint).
const $ = (s) => document.querySelector(s);
const CSRF = document.querySelector('meta[name=csrf]').content;
const state = { schema: null, path: 'config.yaml', liveRun: null, liveRows: [], pushed: null };

async function api(url, body) {
  const init = body === undefined ? {} : {
    method: 'POST', body: JSON.stringify(body),
    headers: { 'Content-Type': 'application/json', 'X-Runner-CSRF': CSRF } };
  const r = await fetch(url, init);
  const data = await r.json();
  if (!r.ok) throw new Error(`${data.error.where ? data.error.where + ': ' : ''}${data.error.message}` +
                             (data.error.hint ? `\n  hint: ${data.error.hint}` : ''));
  return data;
}
function toast(text) { const t = $('#toast'); t.textContent = text; t.style.display = 'block';
  clearTimeout(toast.timer); toast.timer = setTimeout(() => { t.style.display = 'none'; }, 6000); }
const guard = (f) => async (...a) => { try { await f(...a); } catch (e) { toast(e.message); } };
function el(tag, attrs = {}, ...kids) { const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) { if (k === 'text') e.textContent = v; else e.setAttribute(k, v); }
  e.append(...kids); return e; }
function fill(select, items, keep = true) { const old = select.value; const fixed = [...select.querySelectorAll('option[data-fixed]')];
  select.replaceChildren(...fixed, ...items.map((i) => el('option', { value: i, text: i })));
  if (keep && items.includes(old)) select.value = old; }

// ---- tabs
document.querySelectorAll('nav button').forEach((b) => b.addEventListener('click', () => {
  document.querySelectorAll('nav button, .tab').forEach((x) => x.classList.remove('active'));
  b.classList.add('active'); $('#' + b.dataset.tab).classList.add('active');
  if (b.dataset.tab !== 'configure') refreshRuns();
}));

// ---- Configure: the form from the schema
function typeOf(node) { const t = node.type; return Array.isArray(t) ? t.find((x) => x !== 'null') : t; }
function addFields(container, node, prefix) {
  for (const [key, sub] of Object.entries(node.properties || {})) {
    const dotted = prefix ? `${prefix}.${key}` : key;
    const type = typeOf(sub);
    if (type === 'object' && sub.properties) {
      const fs = el('fieldset', {}, el('legend', { text: dotted }));
      addFields(fs, sub, dotted); container.append(fs); continue;
    }
    if (!sub.enum && !['number', 'integer', 'string', 'boolean'].includes(type)) continue;
    let input;
    if (sub.enum) { input = el('select', {}, el('option', { value: '', text: '' }),
      ...sub.enum.map((v) => el('option', { value: JSON.stringify(v), text: String(v) }))); }
    else if (type === 'boolean') input = el('input', { type: 'checkbox' });
    else input = el('input', { type: type === 'string' ? 'text' : 'number', step: 'any' });
    input.dataset.key = dotted; input.dataset.type = sub.enum ? 'enum' : type;
    input.id = 'f-' + dotted.replace(/\./g, '-');
    const dflt = sub.default === undefined ? '' : JSON.stringify(sub.default);
    if (type !== 'boolean' && !sub.enum) input.placeholder = dflt;
    const aliases = (sub['x-aliases'] || []).join(' ');
    const row = el('div', { class: 'field', 'data-search': `${dotted} ${aliases}`.toLowerCase() },
      el('label', { for: input.id, text: key }), input,
      el('div', { class: 'help', text: `${sub.description || ''}${dflt ? ` (default ${dflt})` : ''}` +
                                         `${aliases ? ` · also: ${aliases}` : ''}` }));
    input.addEventListener('change', guard(() => setKey(dotted, input)));
    container.append(row);
  }
}
async function setKey(key, input) {
  let value;
  if (input.dataset.type === 'boolean') value = input.checked;
  else if (input.dataset.type === 'enum') value = input.value === '' ? null : JSON.parse(input.value);
  else if (input.dataset.type === 'number' || input.dataset.type === 'integer') value = Number(input.value);
  else value = input.value;
  for (;;) {  // the YAML typed while the edit was on its way wins: the edit is made again on it
    const sent = $('#yaml').value, r = await api('/api/set', { text: sent, key, value });
    if ($('#yaml').value === sent) { $('#yaml').value = r.text; break; }
  }
  await afterYaml();
}
function showValues(values, inherited) {
  const from = new Map(inherited.map((i) => [i.key, i.from]));
  document.querySelectorAll('#form [data-key]').forEach((input) => {
    const key = input.dataset.key, has = key in values, row = input.parentElement;
    row.classList.toggle('set', has); row.classList.toggle('inherited', from.has(key));
    if (from.has(key)) row.title = `from ${from.get(key)}`;
    if (document.activeElement === input) return;
    if (input.dataset.type === 'boolean') input.checked = has ? !!values[key] : false;
    else if (input.dataset.type === 'enum') input.value = has ? JSON.stringify(values[key]) : '';
    else input.value = has ? values[key] : '';
  });
}
let lintSeq = 0;
async function afterYaml(deep = false) {
  const text = $('#yaml').value, path = $('#config-path').value, seq = ++lintSeq;
  const [lint, vals] = await Promise.all([api('/api/lint', { path, text, deep }), api('/api/values', { path, text })]);
  if (seq !== lintSeq) return;  // an older text's answer, arriving after a newer one was asked for
  const list = $('#lint');
  list.replaceChildren(...(lint.problems.length ? lint.problems.map((p) =>
    el('li', { class: p.severity, 'data-line': p.line ?? '', text: p.text })) :
    [el('li', { class: 'ok', text: `ok: ${path}${deep ? ' (deep)' : ''}` })]));
  showValues(vals.values, vals.inherited);
}
let yamlTimer;
$('#yaml').addEventListener('input', () => { clearTimeout(yamlTimer); yamlTimer = setTimeout(guard(() => afterYaml()), 400); });
$('#form-search').addEventListener('input', () => {
  const q = $('#form-search').value.trim().toLowerCase();
  document.querySelectorAll('#form .field').forEach((f) => f.classList.toggle('hidden', !!q && !f.dataset.search.includes(q)));
});
async function openText(path, text) { $('#config-path').value = path; $('#yaml').value = text; await afterYaml(); }
$('#use-recipe').addEventListener('click', guard(async () => {
  const r = await api('/api/recipes/use', { name: $('#recipe-select').value });
  await loadLists(); await openText(r.path, r.text); toast(`copied to ${r.path}`);
}));
$('#open-config').addEventListener('click', guard(async () => {
  const r = await api('/api/file?path=' + encodeURIComponent($('#config-select').value)); await openText(r.path, r.text);
}));
$('#save').addEventListener('click', guard(async () => {
  const r = await api('/api/save', { path: $('#config-path').value, text: $('#yaml').value });
  $('#save-status').textContent = `saved ${r.path}`; await loadLists();
}));
$('#deep-lint').addEventListener('click', guard(() => afterYaml(true)));
$('#import-file').addEventListener('change', guard(async () => {
  const file = $('#import-file').files[0]; if (!file) return;
  const r = await api('/api/import', { tool: $('#import-tool').value, filename: file.name, text: await file.text() });
  await openText(r.path, r.text);
  if (r.errors.length) toast('the imported config does not lint clean:\n' + r.errors.join('\n'));
}));

// ---- charts
const COLORS = ['#0b61c9', '#d2462c', '#16733a', '#8a4fd0', '#b07800'];
function chart(svg, series) {
  const W = 640, H = 240, L = 46, B = 22, pts = series.flatMap((s) => s.points);
  svg.replaceChildren();
  const ns = 'http://www.w3.org/2000/svg', mk = (t, a) => { const e = document.createElementNS(ns, t);
    for (const [k, v] of Object.entries(a)) e.setAttribute(k, v); svg.append(e); return e; };
  mk('line', { x1: L, y1: H - B, x2: W - 4, y2: H - B, class: 'axis' }); mk('line', { x1: L, y1: 4, x2: L, y2: H - B, class: 'axis' });
  if (!pts.length) return;
  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1), y0 = Math.min(...ys), y1 = Math.max(...ys, y0 + 1e-9);
  const X = (x) => L + (x - x0) / (x1 - x0) * (W - L - 8), Y = (y) => 6 + (y1 - y) / (y1 - y0) * (H - B - 10);
  for (const [v, y] of [[y1, Y(y1)], [y0, Y(y0)]]) mk('text', { x: 2, y: y + 3 }).textContent = v.toPrecision(3);
  mk('text', { x: L, y: H - 6 }).textContent = `step ${x0}`; mk('text', { x: W - 60, y: H - 6 }).textContent = `step ${x1}`;
  series.forEach((s, i) => {
    if (!s.points.length) return;
    mk('path', { class: 'curve', 'data-run': s.name, 'data-points': s.points.length, stroke: COLORS[i % COLORS.length],
      d: s.points.map((p, j) => `${j ? 'L' : 'M'}${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(' ') });
    if (s.dashed) document.querySelector(`#${svg.id} path.curve:last-of-type`).setAttribute('stroke-dasharray', '5 3');
    mk('text', { x: W - 220, y: 14 + 12 * i, style: `fill: ${COLORS[i % COLORS.length]}` }).textContent = s.name;
  });
}
const lossPoints = (rows, kind = 'train') => rows.filter((r) => r.kind === kind && typeof r.loss === 'number').map((r) => [r.step, r.loss]);

// ---- Train: start, live progress from metrics.jsonl, stop, resume
$('#start').addEventListener('click', guard(async () => {
  $('#train-error').textContent = '';
  try {
    const job = await api('/api/train', { config: $('#train-config').value, smoke: $('#smoke').checked,
      overwrite: $('#overwrite').checked, launch: $('#use-launch').checked });
    await refreshRuns();
    if (![...$('#live-run').options].some((o) => o.value === job.run)) $('#live-run').append(el('option', { value: job.run, text: job.run }));
    $('#live-run').value = job.run; watch(job.run);
  } catch (e) { $('#train-error').textContent = e.message; throw e; }
}));
$('#live-run').addEventListener('change', () => watch($('#live-run').value));
$('#stop').addEventListener('click', guard(() => api('/api/stop', { run: state.liveRun })));
$('#resume').addEventListener('click', guard(async () => { await api('/api/resume', { run: state.liveRun }); watch(state.liveRun); }));
function watch(run) { state.liveRun = run; state.liveRows = []; clearTimeout(state.timer); if (run) poll(); }
async function poll() {
  const run = state.liveRun;
  try {
    const r = await api(`/api/metrics?run=${encodeURIComponent(run)}&after=0`);
    if (run !== state.liveRun) return;
    state.liveRows = r.rows; state.totalSteps = r.total_steps; const train = r.rows.filter((x) => x.kind === 'train'), last = train[train.length - 1] || {};
    $('#live-status').textContent = r.status; $('#live-status').className = 'status-' + r.status;
    $('#live-step').textContent = last.step ?? '-'; $('#live-loss').textContent = last.loss?.toFixed?.(4) ?? '-';
    $('#live-lr').textContent = last.lr?.toExponential?.(2) ?? '-'; $('#live-tps').textContent = last.tokens_per_s ?? '-';
    $('#live-mem').textContent = last.memory_mb ? `${Math.round(last.memory_mb)} MB` : '-';
    $('#live-eta').textContent = last.eta_s !== undefined ? `${Math.round(last.eta_s)} s` : eta(train);
    $('#log').textContent = r.log; $('#log').scrollTop = 1e9;
    const runs = await api('/api/runs'); const me = runs.find((x) => x.id === run);
    $('#live-ckpt').textContent = me && me.checkpoints.length ? me.checkpoints.join(', ') : '-';
    chart($('#chart-live'), [{ name: run, points: lossPoints(r.rows) }]);
  } catch (e) { toast(e.message); }
  state.timer = setTimeout(poll, 1000);
}
function eta(train) { if (train.length < 2) return '-'; const a = train[0], b = train[train.length - 1];
  const total = state.totalSteps; if (!total || b.step >= total) return '-';
  return `${Math.round((b.elapsed_s - a.elapsed_s) / (b.step - a.step) * (total - b.step))} s`; }

// ---- Runs: table, detail, compare
async function refreshRuns() {
  const runs = await api('/api/runs');
  // Ticks made while the list was loading (or before) survive the redraw.
  const picked = new Set([...document.querySelectorAll('.pick:checked')].map((c) => c.value));
  $('#runs-table tbody').replaceChildren(...runs.map((r) => el('tr', { 'data-run': r.id },
    el('td', {}, el('input', { type: 'checkbox', class: 'pick', value: r.id, ...(picked.has(r.id) ? { checked: '' } : {}) })),
    el('td', {}, el('a', { href: '#', class: 'open-run', 'data-run': r.id, text: r.id })),
    el('td', { class: 'status status-' + r.status, text: r.status }), el('td', { text: r.step ?? '' }),
    el('td', { text: r.loss?.toFixed?.(4) ?? '' }), el('td', { text: (r.hashes.plan || '').slice(0, 12) }),
    el('td', { text: (r.hashes.config || '').slice(0, 12) }), el('td', { text: r.started }), el('td', { text: r.finished || '' }))));
  document.querySelectorAll('.open-run').forEach((a) => a.addEventListener('click', guard(async (ev) => {
    ev.preventDefault(); const d = await api('/api/run?run=' + encodeURIComponent(a.dataset.run));
    const m = await api('/api/metrics?run=' + encodeURIComponent(a.dataset.run));
    const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
    svg.id = 'run-chart'; svg.setAttribute('class', 'chart'); svg.setAttribute('viewBox', '0 0 640 240');
    $('#run-detail').replaceChildren(el('h3', { text: `${d.id} (${d.status})` }), svg,
      el('pre', { class: 'card', text: d.card || '(no model card yet)' }), el('pre', { class: 'plan', text: JSON.stringify(d.plan, null, 2) }));
    const evalPts = lossPoints(m.rows, 'eval');
    chart(svg, [{ name: 'train loss', points: lossPoints(m.rows) },
      ...(evalPts.length ? [{ name: 'eval loss', points: evalPts, dashed: true }] : [])]);
  })));
  const sweeps = await api('/api/sweeps');
  $('#sweeps').replaceChildren(...sweeps.map((sw) => { const names = [...new Set(sw.trials.flatMap((t) => Object.keys(t.params || {})))];
    return el('table', { class: 'sweep', 'data-sweep': sw.id }, el('caption', { text: `sweep ${sw.id} (${sw.method}, ${sw.metric?.goal || ''} ${sw.metric?.name || ''})` }),
      el('tr', {}, ...['trial', 'status', ...names, sw.metric?.name || 'metric', 'run dir'].map((h) => el('th', { text: h }))),
      ...sw.trials.map((t) => el('tr', {}, el('td', { text: t.index }), el('td', { text: t.status + (t.index === sw.best ? ' (best)' : '') }),
        ...names.map((n) => el('td', { text: JSON.stringify(t.params?.[n] ?? '') })), el('td', { text: t.metric ?? '' }), el('td', { text: t.run_dir || '' })))); }));
  const ids = runs.map((r) => r.id);
  fill($('#live-run'), ids); document.querySelectorAll('.run-select').forEach((s) => fill(s, ids));
  if (!state.liveRun && ids.length) { const running = runs.find((r) => r.status === 'running'); if (running) { $('#live-run').value = running.id; watch(running.id); } }
  $('#runs-table').dataset.refreshes = String(Number($('#runs-table').dataset.refreshes || 0) + 1);
}
$('#refresh-runs').addEventListener('click', guard(refreshRuns));
$('#compare').addEventListener('click', guard(async () => {
  const picked = [...document.querySelectorAll('.pick:checked')].map((c) => c.value);
  const r = await api('/api/compare?' + picked.map((p) => 'runs=' + encodeURIComponent(p)).join('&'));
  const series = r.runs.map((name, i) => ({ name, points: lossPoints(r.curves[i]) }));
  r.runs.forEach((name, i) => { const ev = lossPoints(r.curves[i], 'eval');
    if (ev.length) series.push({ name: `${name} (eval)`, points: ev, dashed: true }); });
  chart($('#compare-chart'), series);
  $('#diff tbody').replaceChildren(el('tr', {}, el('th', { text: 'key' }), ...r.runs.map((n) => el('th', { text: n }))),
    ...r.diff.map((d) => el('tr', { class: 'diff-row', 'data-key': d.key }, el('td', { text: d.key }),
      ...d.values.map((v) => el('td', { text: typeof v === 'string' ? v : JSON.stringify(v) })))));
}));

// ---- Evaluate & chat
async function chatWith(run, log, messages, base = false) {
  const out = el('div', { class: 'assistant' }); log.append(out);
  const r = await fetch('/api/chat', { method: 'POST', body: JSON.stringify({ run, base, messages, temperature: Number($('#chat-temp').value),
    max_tokens: Number($('#chat-max').value) || 256 }),
    headers: { 'Content-Type': 'application/json', 'X-Runner-CSRF': CSRF } });
  if (!r.ok) { const e = await r.json(); throw new Error(e.error.message); }
  const reader = r.body.getReader(), dec = new TextDecoder();
  for (;;) { const { done, value } = await reader.read(); if (done) break; out.textContent += dec.decode(value, { stream: true }); }
  out.dataset.done = '1';
  return out.textContent;
}
state.chat = [];
$('#chat-send').addEventListener('click', guard(async () => {
  const text = $('#chat-input').value.trim(); if (!text) return;
  state.chat.push({ role: 'user', content: text }); $('#chat-input').value = '';
  for (const log of [$('#chat-log'), $('#chat-log-b')]) log.append(el('div', { class: 'user', text: '> ' + text }));
  const answer = await chatWith($('#eval-run').value, $('#chat-log'), state.chat);
  const b = $('#chat-run-b').value;  // the same conversation, so far as the left model answered it
  if (b) await chatWith(b === '__base__' ? $('#eval-run').value : b, $('#chat-log-b'), state.chat, b === '__base__');
  state.chat.push({ role: 'assistant', content: answer });
}));
$('#eval-run').addEventListener('change', () => { state.chat = []; $('#chat-log').replaceChildren(); $('#chat-log-b').replaceChildren(); });
async function follow(job, pre, done) {
  const r = await api('/api/log?job=' + encodeURIComponent(job.id)); pre.textContent = r.log; pre.scrollTop = 1e9;
  if (r.job.running) setTimeout(() => follow(job, pre, done), 1000); else if (done) done(r.job);
}
async function showResults() { const d = await api('/api/run?run=' + encodeURIComponent($('#eval-run').value));
  $('#eval-results').textContent = JSON.stringify(d.results, null, 2); }
$('#eval-start').addEventListener('click', guard(async () => follow(await api('/api/eval', {
  run: $('#eval-run').value, tasks: $('#eval-tasks').value, limit: Number($('#eval-limit').value) || null }), $('#eval-log'), guard(showResults))));
$('#predict-start').addEventListener('click', guard(async () => follow(await api('/api/predict', {
  run: $('#eval-run').value, data: $('#predict-data').value || null, limit: Number($('#eval-limit').value) || null }), $('#eval-log'), guard(showResults))));

// ---- Export
document.querySelectorAll('[data-export]').forEach((b) => b.addEventListener('click', guard(async () => follow(
  await api('/api/export', { run: $('#export-run').value, kind: b.dataset.export, quant: $('#export-quant').value }), $('#export-log')))));
$('#push-dry').addEventListener('click', guard(async () => follow(await api('/api/export', {
  run: $('#export-run').value, kind: 'push', repo: $('#push-repo').value, dry_run: true }), $('#export-log'),
  (job) => { $('#push-real').disabled = job.exit_code !== 0; })));
$('#push-real').addEventListener('click', guard(async () => follow(await api('/api/export', {
  run: $('#export-run').value, kind: 'push', repo: $('#push-repo').value, dry_run: false }), $('#export-log'))));

// ---- start
async function loadLists() {
  const [recipes, configs] = await Promise.all([api('/api/recipes'), api('/api/configs')]);
  fill($('#recipe-select'), recipes.map((r) => r.name)); fill($('#config-select'), configs); fill($('#train-config'), configs);
}
(async () => {
  state.schema = await api('/api/schema'); addFields($('#form'), state.schema, '');
  await loadLists(); await refreshRuns();
  document.body.dataset.ready = '1';
})().catch((e) => toast(e.message));
