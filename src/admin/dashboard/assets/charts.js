// The charts drawn as SVG: axes and ticks, the stacked bars of spend and savings per
// day, the hit-rate line, and the labelled bar rows of the models and budgets.

import { clear, colorOf, el, empty, money, percent, rate, svg } from './helpers.js';

export function niceMax(v) {
  if (!(v > 0)) return 1;
  var step = Math.pow(10, Math.floor(Math.log10(v / 4)));
  var mults = [1, 2, 2.5, 5, 10];
  for (var i = 0; i < mults.length; i++) {
    if (step * mults[i] * 4 >= v) return step * mults[i] * 4;
  }
  return step * 40;
}

// An axis label: as many decimals as the tick step needs, no trailing zeros.
export function tickMoney(step) {
  var decimals = Math.min(10, Math.max(0, Math.ceil(-Math.log10(step)) + 1));
  return function (v) {
    var s = v.toFixed(decimals);
    if (s.indexOf('.') >= 0) s = s.replace(/0+$/, '').replace(/\.$/, '');
    return '$' + s;
  };
}

export function frame(box, height, labels) {
  var width = Math.max(260, Math.floor(box.clientWidth || 600));
  var longest = labels.reduce(function (n, l) { return Math.max(n, l.length); }, 0);
  var m = { top: 10, right: 12, bottom: 26, left: Math.max(36, longest * 7 + 12) };
  var root = svg('svg', {
    width: width, height: height, viewBox: '0 0 ' + width + ' ' + height,
    role: 'img', 'class': 'plot'
  });
  return { root: root, width: width, height: height, m: m,
    w: width - m.left - m.right, h: height - m.top - m.bottom };
}

export var TICKS = 4;

export function tickLabels(yMax, fmt) {
  var out = [];
  for (var i = 0; i <= TICKS; i++) out.push(fmt(yMax * i / TICKS));
  return out;
}

export function axes(g, days, yMax, fmt) {
  var ticks = TICKS;
  for (var i = 0; i <= ticks; i++) {
    var v = yMax * i / ticks;
    var y = g.m.top + g.h - g.h * i / ticks;
    g.root.appendChild(svg('line', { x1: g.m.left, x2: g.m.left + g.w, y1: y, y2: y,
      'class': i === 0 ? 'axis' : 'grid' }));
    g.root.appendChild(svg('text', { x: g.m.left - 6, y: y + 4, 'class': 'tick',
      'text-anchor': 'end' }, fmt(v)));
  }
  var maxLabels = Math.max(2, Math.floor(g.w / 70));
  var every = Math.max(1, Math.ceil(days.length / maxLabels));
  var slot = g.w / Math.max(1, days.length);
  days.forEach(function (day, i) {
    if (i % every !== 0 && i !== days.length - 1) return;
    if (i === days.length - 1 && i % every !== 0 && (i % every) < every / 2) return;
    g.root.appendChild(svg('text', { x: g.m.left + slot * (i + 0.5),
      y: g.m.top + g.h + 17, 'class': 'tick', 'text-anchor': 'middle' }, day.slice(5)));
  });
  return slot;
}

function legend(names, all) {
  return el('ul', { 'class': 'legend' }, names.map(function (p) {
    var sw = el('span', { 'class': 'swatch' });
    sw.style.background = colorOf(p, all);
    return el('li', null, [sw, p]);
  }));
}

export function renderStacked(box, days, rows, shown, all, field) {
  var byDay = {};
  var used = [];
  rows.forEach(function (r) {
    if (!r.day || !(r[field] > 0)) return;
    (byDay[r.day] = byDay[r.day] || {})[r.project] = r[field];
    if (used.indexOf(r.project) < 0) used.push(r.project);
  });
  var names = shown.filter(function (p) { return used.indexOf(p) >= 0; });
  if (!names.length) {
    empty(box, field === 'cost' ? 'Nothing spent in this range.' : 'Nothing saved in this range.');
    return;
  }
  var max = 0;
  days.forEach(function (d) {
    var s = 0;
    names.forEach(function (p) { s += (byDay[d] && byDay[d][p]) || 0; });
    max = Math.max(max, s);
  });
  var yMax = niceMax(max);
  var fmt = tickMoney(yMax / TICKS);
  var g = frame(box, 220, tickLabels(yMax, fmt));
  var slot = axes(g, days, yMax, fmt);
  var bw = Math.max(1, Math.min(40, slot * 0.7));
  days.forEach(function (d, i) {
    var y = g.m.top + g.h;
    names.forEach(function (p) {
      var v = (byDay[d] && byDay[d][p]) || 0;
      if (!v) return;
      var hgt = Math.max(1, g.h * v / yMax);
      y -= hgt;
      g.root.appendChild(svg('rect', {
        x: g.m.left + slot * i + (slot - bw) / 2, y: y, width: bw, height: hgt,
        fill: colorOf(p, all), 'class': 'bar'
      }, svg('title', null, d + ' · ' + p + ': ' + money(v))));
    });
  });
  clear(box);
  box.appendChild(g.root);
  box.appendChild(legend(names, all));
}

export function renderHitRate(box, days, rows) {
  var per = {};
  rows.forEach(function (r) {
    if (!r.day) return;
    var x = per[r.day] = per[r.day] || { hits: 0, requests: 0 };
    x.hits += r.cache_hits;
    x.requests += r.requests;
  });
  if (!Object.keys(per).length) {
    empty(box, 'No requests in this range.');
    return;
  }
  var pct = function (v) { return Math.round(v * 100) + '%'; };
  var g = frame(box, 200, tickLabels(1, pct));
  var slot = axes(g, days, 1, pct);
  var pts = [];
  days.forEach(function (d, i) {
    var x = per[d];
    var r = x ? rate(x.hits, x.requests) : null;
    if (r === null) { pts.push(null); return; }
    pts.push({ x: g.m.left + slot * (i + 0.5), y: g.m.top + g.h * (1 - r), r: r, d: d, n: x });
  });
  var path = '';
  var pen = false;
  pts.forEach(function (p) {
    if (!p) { pen = false; return; }
    path += (pen ? 'L' : 'M') + p.x.toFixed(1) + ' ' + p.y.toFixed(1);
    pen = true;
  });
  if (path) g.root.appendChild(svg('path', { d: path, 'class': 'line' }));
  pts.forEach(function (p) {
    if (!p) return;
    g.root.appendChild(svg('circle', { cx: p.x, cy: p.y, r: 3.5, 'class': 'dot' },
      svg('title', null, p.d + ': ' + percent(p.r) + ' (' + p.n.hits + ' of ' +
        p.n.requests + ' requests)')));
  });
  clear(box);
  box.appendChild(g.root);
}

export function barRow(attrs, name, fraction, text, cls) {
  var fill = el('span', { 'class': 'fill' + (cls ? ' ' + cls : '') });
  fill.style.width = Math.max(0, Math.min(100, fraction * 100)).toFixed(1) + '%';
  return el('div', attrs, [
    el('div', { 'class': 'bar-head' }, [el('span', { 'class': 'name' }, name),
      el('span', { 'class': 'figure' }, text)]),
    el('div', { 'class': 'track' }, fill)
  ]);
}
