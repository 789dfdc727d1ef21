// The dashboard's small shared helpers: building DOM and SVG nodes (text is always text,
// never markup), formatting money, counts and rates, and UTC day arithmetic.

var SVG_NS = 'http://www.w3.org/2000/svg';
var PALETTE = ['#2563eb', '#d97706', '#059669', '#db2777', '#7c3aed',
  '#0891b2', '#65a30d', '#dc2626', '#4b5563', '#c026d3'];

export function $(id) { return document.getElementById(id); }

// An element with attributes and children; strings become text nodes, never markup.
export function el(tag, attrs, children) {
  var node = document.createElement(tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

export function svg(tag, attrs, children) {
  var node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

function setAttrs(node, attrs) {
  if (!attrs) return;
  Object.keys(attrs).forEach(function (k) {
    var v = attrs[k];
    if (v === null || v === undefined || v === false) return;
    node.setAttribute(k, v === true ? '' : String(v));
  });
}

export function append(node, children) {
  if (children === null || children === undefined) return;
  if (!Array.isArray(children)) children = [children];
  children.forEach(function (c) {
    if (c === null || c === undefined || c === false) return;
    node.appendChild(typeof c === 'object' ? c : document.createTextNode(String(c)));
  });
}

export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
}

export function money(v) {
  v = Number(v) || 0;
  if (v === 0) return '$0.00';
  var a = Math.abs(v);
  var digits = a >= 1 ? 2 : Math.min(8, 2 - Math.floor(Math.log10(a)));
  return (v < 0 ? '-$' : '$') + a.toLocaleString('en-US', {
    minimumFractionDigits: digits, maximumFractionDigits: digits
  });
}

export function count(v) { return (Number(v) || 0).toLocaleString('en-US'); }

export function rate(hits, requests) {
  return requests > 0 ? hits / requests : null;
}

export function percent(r) {
  return r === null ? '–' : (r * 100).toFixed(1) + '%';
}

export function todayUtc() {
  return new Date().toISOString().slice(0, 10);
}

export function addDays(day, n) {
  var p = day.split('-').map(Number);
  return new Date(Date.UTC(p[0], p[1] - 1, p[2] + n)).toISOString().slice(0, 10);
}

export function daysBetween(from, to) {
  var out = [];
  for (var d = from; d <= to && out.length < 3660; d = addDays(d, 1)) out.push(d);
  return out;
}

export function colorOf(project, all) {
  var i = all.indexOf(project);
  return PALETTE[(i < 0 ? all.length : i) % PALETTE.length];
}

export function empty(box, text) {
  clear(box);
  box.appendChild(el('p', { 'class': 'empty muted' }, text));
}

// A table's figure, its field and raw value kept as attributes for readers of the page.
export function cell(field, value, text) {
  return el('td', { 'class': 'num', 'data-field': field, 'data-value': value }, text);
}
