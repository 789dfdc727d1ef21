// This daemon's own figures: the filter form, the totals, the top models, the projects
// table, the ledger against credits, and the recent requests.

import { append, cell, clear, colorOf, count, el, empty, money, percent, rate, svg, $ } from './helpers.js';
import { axes, barRow, frame, niceMax, tickLabels, tickMoney, TICKS } from './charts.js';

export function renderFilters(f, all) {
  var sel = $('f-project');
  clear(sel);
  sel.appendChild(el('option', { value: '', selected: !f.project }, 'All projects'));
  all.forEach(function (p) {
    sel.appendChild(el('option', { value: p, selected: p === f.project }, p));
  });
  sel.value = f.project;
  $('f-since').value = f.since;
  $('f-since').setAttribute('value', f.since);
  $('f-until').value = f.until;
  $('f-until').setAttribute('value', f.until);
}

function card(key, label, value, text, note) {
  return el('div', { 'class': 'card', 'data-total': key, 'data-value': value }, [
    el('span', { 'class': 'label' }, label),
    el('span', { 'class': 'value' }, text),
    note ? el('span', { 'class': 'note' }, note) : null
  ]);
}

export function renderTotals(t) {
  var box = $('totals');
  clear(box);
  var r = rate(t.cache_hits, t.requests);
  append(box, [
    card('requests', 'Requests', t.requests, count(t.requests),
      count(t.upstream_requests) + ' went upstream'),
    card('hit_rate', 'Cache hit rate', r === null ? '' : r, percent(r),
      count(t.cache_hits) + ' answered from cache'),
    card('cost', 'Spent', t.cost, money(t.cost), null),
    card('saved', 'Saved', t.saved, money(t.saved), 'by cache hits'),
    card('tokens', 'Tokens', t.input_tokens + t.output_tokens,
      count(t.input_tokens + t.output_tokens),
      count(t.input_tokens) + ' in · ' + count(t.output_tokens) + ' out')
  ]);
}

export function renderModels(box, rows) {
  if (!rows.length) { empty(box, 'No requests in this range.'); return; }
  var top = rows.slice(0, 8);
  var maxCost = Math.max.apply(null, top.map(function (r) { return r.cost; }));
  var maxReq = Math.max.apply(null, top.map(function (r) { return r.requests; }));
  clear(box);
  top.forEach(function (r) {
    var f = maxCost > 0 ? r.cost / maxCost : (maxReq > 0 ? r.requests / maxReq : 0);
    box.appendChild(barRow({ 'class': 'bar-row', 'data-model': r.model || '' },
      r.model || '(no model)', f,
      money(r.cost) + ' · ' + count(r.requests) + ' req · ' +
      percent(rate(r.cache_hits, r.requests)) + ' hits'));
  });
  if (rows.length > top.length) {
    box.appendChild(el('p', { 'class': 'muted small' }, 'and ' + (rows.length - top.length) + ' more'));
  }
}

export function renderProjects(report, all) {
  var body = document.querySelector('#projects tbody');
  clear(body);
  if (!report.rows.length) {
    body.appendChild(el('tr', null, el('td', { colspan: 5, 'class': 'muted' }, 'No requests in this range.')));
    return;
  }
  report.rows.forEach(function (r) {
    var sw = el('span', { 'class': 'swatch' });
    sw.style.background = colorOf(r.project, all);
    var hr = rate(r.cache_hits, r.requests);
    body.appendChild(el('tr', { 'data-project': r.project }, [
      el('th', { scope: 'row' }, [sw, r.project]),
      cell('requests', r.requests, count(r.requests)),
      cell('hit_rate', hr === null ? '' : hr, percent(hr)),
      cell('cost', r.cost, money(r.cost)),
      cell('saved', r.saved, money(r.saved))
    ]));
  });
}

// Per interval between two readings of /credits: what the ledger recorded beside what
// the credits dropped by; intervals whose drift is over spend.drift_warn are marked.
export function renderReconcile(box, rec) {
  var all = (rec && rec.intervals) || [];
  if (!all.length) {
    empty(box, 'No two readings of /credits yet: they are taken as clients ask for ' +
      '/credits, and every spend.credits_poll when the daemon holds the upstream key.');
    return;
  }
  var rows = all.slice(-30);
  var max = rows.reduce(function (m, i) { return Math.max(m, i.ledger, i.drop); }, 0);
  var yMax = niceMax(max);
  var fmt = tickMoney(yMax / TICKS);
  var g = frame(box, 220, tickLabels(yMax, fmt));
  var labels = rows.map(function (i) { return String(i.to).slice(0, 16).replace('T', ' '); });
  var slot = axes(g, labels, yMax, fmt);
  var bw = Math.max(1, Math.min(18, slot * 0.35));
  var y0 = g.m.top + g.h;
  rows.forEach(function (i, n) {
    var x = g.m.left + slot * n;
    var group = svg('g', { 'class': 'interval' + (i.flagged ? ' flagged' : ''),
      'data-interval': n, 'data-flagged': i.flagged ? 'true' : 'false',
      'data-ledger': i.ledger, 'data-drop': i.drop });
    if (i.flagged) {
      group.appendChild(svg('rect', { x: x + 1, y: g.m.top, width: Math.max(1, slot - 2),
        height: g.h, 'class': 'flag-band' }));
    }
    [['ledger', i.ledger, 0], ['drop', Math.max(0, i.drop), 1]].forEach(function (b) {
      var hgt = b[1] > 0 ? Math.max(1, g.h * b[1] / yMax) : 0;
      group.appendChild(svg('rect', { x: x + slot / 2 - bw + b[2] * bw, y: y0 - hgt,
        width: bw, height: hgt, 'class': 'bar ' + b[0] }));
    });
    var drift = i.drift_pct === null ? 'n/a' : i.drift_pct.toFixed(2) + '%';
    group.appendChild(svg('title', null, i.from + ' to ' + i.to + ' · ' + i.key.slice(0, 11) +
      '\nledger ' + money(i.ledger) + ', credits dropped ' + money(i.drop) + ', drift ' + drift +
      (i.flagged ? ' (over the warning)' : '') + (i.topped_up ? ' (credits rose: a top-up?)' : '')));
    g.root.appendChild(group);
  });
  clear(box);
  box.appendChild(g.root);
  var key = function (cls, text) {
    return el('li', null, [el('span', { 'class': 'swatch ' + cls }), text]);
  };
  box.appendChild(el('ul', { 'class': 'legend' }, [key('ledger', 'ledger spend'),
    key('drop', 'credit drop'), key('flag-band', rec.flagged + ' flagged')]));
}

export function renderRecent(items) {
  var withPrompt = items.some(function (r) { return typeof r.prompt === 'string'; });
  var head = document.querySelector('#recent thead tr');
  clear(head);
  var cols = ['Time (UTC)', 'Project', 'Endpoint', 'Model', 'Outcome', 'Status', 'Cost', 'Saved', 'Upstream'];
  if (withPrompt) cols.push('Prompt');
  cols.forEach(function (c, i) {
    head.appendChild(el('th', { scope: 'col', 'class': i >= 5 && i <= 8 ? 'num' : null }, c));
  });
  var body = document.querySelector('#recent tbody');
  clear(body);
  if (!items.length) {
    body.appendChild(el('tr', null, el('td', { colspan: cols.length, 'class': 'muted' },
      'No requests since the daemon started.')));
    return;
  }
  items.forEach(function (r) {
    var ts = String(r.ts || '');
    var row = el('tr', { 'data-recent-project': r.project }, [
      el('td', { title: ts }, ts.slice(0, 19).replace('T', ' ')),
      el('td', null, r.project),
      el('td', null, r.endpoint + (r.stream ? ' (stream)' : '')),
      el('td', null, r.model || '–'),
      el('td', null, el('span', { 'class': 'badge ' + r.outcome }, r.outcome)),
      el('td', { 'class': 'num' }, r.status),
      el('td', { 'class': 'num' }, r.cost === null ? '–' : money(r.cost) +
        (r.cost_source === 'estimated' ? ' (est.)' : '')),
      el('td', { 'class': 'num' }, r.saved === null ? '–' : money(r.saved)),
      el('td', { 'class': 'num' }, r.upstream_ms === null ? '–' : r.upstream_ms + ' ms')
    ]);
    if (withPrompt) row.appendChild(el('td', { 'class': 'prompt' }, r.prompt || ''));
    body.appendChild(row);
  });
}
