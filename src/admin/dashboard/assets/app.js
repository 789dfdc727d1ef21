// The chatcache dashboard: reads the admin API's JSON and draws it. No outside
// requests; every fetch goes to the daemon that served this page.
(function () {
  'use strict';

  var API = '/_chatcache';
  var SVG_NS = 'http://www.w3.org/2000/svg';
  var PALETTE = ['#2563eb', '#d97706', '#059669', '#db2777', '#7c3aed',
    '#0891b2', '#65a30d', '#dc2626', '#4b5563', '#c026d3'];
  var REFRESH_MS = 30000;
  var DEFAULT_DAYS = 30;
  var DAY_RE = /^\d{4}-\d{2}-\d{2}$/;

  var state = { data: null, timer: null, token: null, tokenTried: false, teamSeq: 0 };

  // ---------------------------------------------------------------- the admin token

  // With admin.token set, the API wants it as a bearer token, which a page load cannot
  // carry. The page is opened as /_chatcache/#token=…: a fragment never leaves the
  // browser. The token is kept for this tab only and taken out of the address bar.
  var TOKEN_KEY = 'chatcache-admin-token';

  function adminToken() {
    var m = /^#(?:.*&)?token=([^&]*)/.exec(window.location.hash);
    if (m) {
      try { sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1])); } catch (e) { /* storage off */ }
      history.replaceState(null, '', window.location.pathname + window.location.search);
    }
    try { return sessionStorage.getItem(TOKEN_KEY); } catch (e) { return null; }
  }

  function forgetToken() {
    try { sessionStorage.removeItem(TOKEN_KEY); } catch (e) { /* storage off */ }
  }

  // ---------------------------------------------------------------- small helpers

  function $(id) { return document.getElementById(id); }

  // An element with attributes and children; strings become text nodes, never markup.
  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function svg(tag, attrs, children) {
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

  function append(node, children) {
    if (children === null || children === undefined) return;
    if (!Array.isArray(children)) children = [children];
    children.forEach(function (c) {
      if (c === null || c === undefined || c === false) return;
      node.appendChild(typeof c === 'object' ? c : document.createTextNode(String(c)));
    });
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function money(v) {
    v = Number(v) || 0;
    if (v === 0) return '$0.00';
    var a = Math.abs(v);
    var digits = a >= 1 ? 2 : Math.min(8, 2 - Math.floor(Math.log10(a)));
    return (v < 0 ? '-$' : '$') + a.toLocaleString('en-US', {
      minimumFractionDigits: digits, maximumFractionDigits: digits
    });
  }

  function count(v) { return (Number(v) || 0).toLocaleString('en-US'); }

  function rate(hits, requests) {
    return requests > 0 ? hits / requests : null;
  }

  function percent(r) {
    return r === null ? '–' : (r * 100).toFixed(1) + '%';
  }

  function todayUtc() {
    return new Date().toISOString().slice(0, 10);
  }

  function addDays(day, n) {
    var p = day.split('-').map(Number);
    return new Date(Date.UTC(p[0], p[1] - 1, p[2] + n)).toISOString().slice(0, 10);
  }

  function daysBetween(from, to) {
    var out = [];
    for (var d = from; d <= to && out.length < 3660; d = addDays(d, 1)) out.push(d);
    return out;
  }

  function colorOf(project, all) {
    var i = all.indexOf(project);
    return PALETTE[(i < 0 ? all.length : i) % PALETTE.length];
  }

  // ---------------------------------------------------------------- the URL is the state

  function filters() {
    var q = new URLSearchParams(location.search);
    var day = function (name) {
      var v = q.get(name) || '';
      return DAY_RE.test(v) ? v : '';
    };
    var f = { project: q.get('project') || '', since: day('since'), until: day('until') };
    f.explicitRange = Boolean(f.since || f.until);
    if (!f.explicitRange) f.since = addDays(todayUtc(), 1 - DEFAULT_DAYS);
    return f;
  }

  function query(f, extra) {
    var q = new URLSearchParams();
    (extra || []).forEach(function (kv) { q.append(kv[0], kv[1]); });
    if (f.since) q.set('since', f.since);
    if (f.until) q.set('until', f.until);
    if (f.project) q.set('project', f.project);
    return q.toString();
  }

  function getJson(path) {
    var headers = { Accept: 'application/json' };
    if (state.token) headers.Authorization = 'Bearer ' + state.token;
    return fetch(API + path, {
      credentials: 'same-origin',
      headers: headers
    }).then(function (r) {
      return r.text().then(function (text) {
        var body = null;
        try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
        if (!r.ok) {
          var msg = body && body.error && body.error.message ? body.error.message : text;
          var err = new Error(path.split('?')[0] + ': ' + r.status + ' ' + msg);
          err.needsToken = r.status === 401;
          err.status = r.status;
          throw err;
        }
        return body;
      });
    });
  }

  // ---------------------------------------------------------------- loading

  function load() {
    var f = filters();
    if (state.timer) clearTimeout(state.timer);
    document.body.setAttribute('data-state', 'loading');
    var noProject = { since: f.since, until: f.until, project: '' };
    var recentQ = new URLSearchParams({ limit: '25' });
    if (f.project) recentQ.set('project', f.project);
    // The team's figures come from PostgreSQL, which may be slow or away: they are drawn
    // when they come, and never hold up or fail this daemon's own.
    loadTeam(f);
    return Promise.all([
      getJson('/spend?' + query(f, [['by', 'project'], ['by', 'day']])),
      getJson('/spend?' + query(f, [['by', 'model']])),
      getJson('/spend?' + query(f, [['by', 'project']])),
      getJson('/spend?' + query(noProject, [['by', 'project']])),
      getJson('/spend?by=project'),
      getJson('/budgets'),
      getJson('/recent?' + recentQ.toString()),
      getJson('/spend/reconcile' + (f.since ? '?since=' + encodeURIComponent(f.since) : ''))
    ]).then(function (r) {
      state.data = {
        f: f, daily: r[0], models: r[1], projects: r[2], rangeProjects: r[3],
        everProjects: r[4], budgets: r[5], recent: r[6], reconcile: r[7]
      };
      render();
      document.body.setAttribute('data-state', 'ready');
      $('status').textContent = 'Updated ' + new Date().toLocaleTimeString();
    }).catch(function (e) {
      if (e.needsToken) {
        // Asking again would only be refused again: wait for a page opened with a token.
        if (state.token) forgetToken();
        state.token = null;
        document.body.setAttribute('data-state', 'locked');
        $('status').textContent = (state.tokenTried ? 'That admin token was refused. ' : '') +
          'This chatcache has an admin token: open this page as ' + API +
          '/#token=<admin.token> (the token stays in this browser tab).';
        return 'locked';
      }
      document.body.setAttribute('data-state', 'error');
      $('status').textContent = 'Could not load: ' + e.message;
    }).then(function (outcome) {
      if (outcome !== 'locked') state.timer = setTimeout(load, REFRESH_MS);
    });
  }

  // ---------------------------------------------------------------- rendering

  function render() {
    var d = state.data;
    if (!d) return;
    var f = d.f;
    var all = [];
    d.everProjects.rows.concat(d.rangeProjects.rows).forEach(function (r) {
      if (r.project && all.indexOf(r.project) < 0) all.push(r.project);
    });
    d.budgets.forEach(function (b) { if (all.indexOf(b.project) < 0) all.push(b.project); });
    if (f.project && all.indexOf(f.project) < 0) all.push(f.project);
    all.sort();

    document.body.setAttribute('data-project', f.project);
    renderFilters(f, all);
    renderTotals(d.projects.total);
    var end = f.until || todayUtc();
    var firstDay = d.daily.rows.reduce(function (m, r) {
      return r.day && (!m || r.day < m) ? r.day : m;
    }, '');
    var start = f.since || firstDay || end;
    var days = daysBetween(start, end);
    var scope = (f.project ? 'Project ' + f.project : 'All projects') + ' · ' +
      start + ' to ' + end + ' (UTC)';
    $('scope').textContent = scope;

    var shown = f.project ? [f.project] : all;
    renderStacked($('chart-spend'), days, d.daily.rows, shown, all, 'cost');
    renderStacked($('chart-saved'), days, d.daily.rows, shown, all, 'saved');
    renderHitRate($('chart-hits'), days, d.daily.rows);
    renderModels($('models'), d.models.rows);
    renderProjects(d.projects, all);
    renderBudgets($('budgets'), d.budgets.filter(function (b) {
      return !f.project || b.project === f.project;
    }));
    renderRecent(d.recent);
    renderReconcile($('chart-reconcile'), d.reconcile);
  }

  function renderFilters(f, all) {
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

  function renderTotals(t) {
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

  function niceMax(v) {
    if (!(v > 0)) return 1;
    var step = Math.pow(10, Math.floor(Math.log10(v / 4)));
    var mults = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < mults.length; i++) {
      if (step * mults[i] * 4 >= v) return step * mults[i] * 4;
    }
    return step * 40;
  }

  // An axis label: as many decimals as the tick step needs, no trailing zeros.
  function tickMoney(step) {
    var decimals = Math.min(10, Math.max(0, Math.ceil(-Math.log10(step)) + 1));
    return function (v) {
      var s = v.toFixed(decimals);
      if (s.indexOf('.') >= 0) s = s.replace(/0+$/, '').replace(/\.$/, '');
      return '$' + s;
    };
  }

  function frame(box, height, labels) {
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

  var TICKS = 4;

  function tickLabels(yMax, fmt) {
    var out = [];
    for (var i = 0; i <= TICKS; i++) out.push(fmt(yMax * i / TICKS));
    return out;
  }

  function axes(g, days, yMax, fmt) {
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

  function empty(box, text) {
    clear(box);
    box.appendChild(el('p', { 'class': 'empty muted' }, text));
  }

  function renderStacked(box, days, rows, shown, all, field) {
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

  function renderHitRate(box, days, rows) {
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

  function barRow(attrs, name, fraction, text, cls) {
    var fill = el('span', { 'class': 'fill' + (cls ? ' ' + cls : '') });
    fill.style.width = Math.max(0, Math.min(100, fraction * 100)).toFixed(1) + '%';
    return el('div', attrs, [
      el('div', { 'class': 'bar-head' }, [el('span', { 'class': 'name' }, name),
        el('span', { 'class': 'figure' }, text)]),
      el('div', { 'class': 'track' }, fill)
    ]);
  }

  function renderModels(box, rows) {
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

  function cell(field, value, text) {
    return el('td', { 'class': 'num', 'data-field': field, 'data-value': value }, text);
  }

  function renderProjects(report, all) {
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

  function renderBudgets(box, rows) {
    if (!rows.length) {
      empty(box, 'No projects are configured. Add [projects.NAME] with budget = … to the config.');
      return;
    }
    clear(box);
    rows.forEach(function (b) {
      var attrs = { 'class': 'bar-row', 'data-budget-project': b.project };
      if (b.budget === null) {
        box.appendChild(barRow(attrs, b.project, 0, 'no budget', null));
        return;
      }
      var f = b.budget > 0 ? b.spent / b.budget : 1;
      var cls = f >= 1 ? 'over' : (f >= 0.8 ? 'near' : 'ok');
      var alerted = typeof b.alerted === 'number';
      if (alerted) attrs['data-alerted'] = b.alerted;
      var row = barRow(attrs, b.project + ' · per ' + b.period, f,
        money(b.spent) + ' of ' + money(b.budget) + ' (' + Math.round(f * 100) + '%)', cls);
      if (alerted) {
        var at = String(Math.round(b.alerted * 10000) / 100) + '%';
        row.querySelector('.name').appendChild(el('span', { 'class': 'badge alert',
          title: 'past the ' + at + ' alert threshold (alerts.thresholds) this period' },
          'alert ' + at));
      }
      box.appendChild(row);
    });
  }

  // Per interval between two readings of /credits: what the ledger recorded beside what
  // the credits dropped by; intervals whose drift is over spend.drift_warn are marked.
  function renderReconcile(box, rec) {
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

  function renderRecent(items) {
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

  // ---------------------------------------------------------------- the team

  // With a team ledger (health's team_ledger), a Team panel below the totals: spend across
  // every daemon, read from PostgreSQL, by project and by daemon, for the same range and
  // project; and how this daemon's shipping goes. Without one, nothing of it is drawn.
  function loadTeam(f) {
    var seq = ++state.teamSeq;
    var current = function () { return seq === state.teamSeq; };
    document.body.setAttribute('data-team', 'loading');
    return getJson('/health').then(function (h) {
      var ship = h && h.team_ledger;
      if (!ship) {
        if (current()) dropTeam();
        return null;
      }
      var team = [['team', '1']];
      return Promise.all([
        getJson('/spend?' + query(f, team.concat([['by', 'project']]))),
        getJson('/spend?' + query(f, team.concat([['by', 'daemon']])))
      ]).then(function (r) {
        if (current()) renderTeam(ship, { projects: r[0], daemons: r[1] }, null);
      }, function (e) {
        if (current()) renderTeam(ship, null, e);
      });
    }).catch(function (e) {
      // Health itself failed (the main load says why): figures drawn before are no longer
      // known to be current, so they go.
      if (current() && $('team')) renderTeam(null, null, e);
      else if (current()) document.body.setAttribute('data-team', 'error');
    });
  }

  function dropTeam() {
    var box = $('team');
    if (box) box.parentNode.removeChild(box);
    document.body.setAttribute('data-team', 'none');
  }

  function teamPanel() {
    var box = $('team');
    if (!box) {
      box = el('section', { id: 'team', 'class': 'panel team', 'aria-label': 'Team' });
      $('totals').insertAdjacentElement('afterend', box);
    }
    clear(box);
    return box;
  }

  function ago(seconds) {
    var s = Math.max(0, Math.round(Number(seconds) || 0));
    if (s < 120) return s + ' s';
    if (s < 7200) return Math.round(s / 60) + ' min';
    return Math.round(s / 3600) + ' h';
  }

  // This daemon's shipping: lines not yet in the team ledger, and PostgreSQL's state.
  function shipping(ship) {
    var pending = Number(ship.pending_lines) || 0;
    var lag = pending === 0 ? 'every ledger line shipped' :
      count(pending) + (pending === 1 ? ' line' : ' lines') + ' waiting to ship, the oldest ' +
      'from ' + ago(ship.oldest_pending_seconds) + ' ago';
    var pg = ship.postgres === 'up' ? 'PostgreSQL reachable' :
      ship.postgres === 'down' ? 'PostgreSQL unreachable: lines wait in the local ledger, ' +
        (ship.budgets === 'refuse' ? 'budgeted requests are refused' :
          'budgets are checked against this daemon\'s ledger only') :
        'PostgreSQL not reached yet';
    return el('p', { 'class': 'shipping', id: 'team-shipping', 'data-pending': pending,
      'data-postgres': ship.postgres || 'unknown', 'data-ship-state': ship.state }, [
      el('span', { 'class': 'badge ' + (ship.postgres === 'up' ? 'up' : 'down') },
        ship.postgres === 'up' ? 'up' : (ship.postgres === 'down' ? 'down' : '?')),
      ' This daemon (' + ship.daemon + '): ' + lag + ' · ' + pg
    ]);
  }

  function renderTeam(ship, data, err) {
    var box = teamPanel();
    append(box, el('h2', null, ['Team ', el('span', { 'class': 'muted small' },
      '(every daemon\'s ledger, from PostgreSQL; the figures above are this daemon\'s)')]));
    if (ship) box.appendChild(shipping(ship));
    if (!data) {
      var down = !err || err.status === 503;
      document.body.setAttribute('data-team', down ? 'unreachable' : 'error');
      box.classList.add('down');
      append(box, [
        el('p', { 'class': 'team-down', role: 'alert' }, down ?
          'PostgreSQL is unreachable: the team\'s figures cannot be read now, so none are ' +
          'shown. This daemon\'s own figures are current; its lines ship when PostgreSQL is back.' :
          'Could not load the team\'s figures, so none are shown.'),
        err ? el('p', { 'class': 'muted small' }, err.message) : null
      ]);
      return;
    }
    box.classList.remove('down');
    var t = data.projects.total;
    var r = rate(t.cache_hits, t.requests);
    var teamCard = function (key, label, value, text) {
      return el('div', { 'class': 'card', 'data-team-total': key, 'data-value': value }, [
        el('span', { 'class': 'label' }, label), el('span', { 'class': 'value' }, text)]);
    };
    append(box, el('div', { 'class': 'cards' }, [
      teamCard('requests', 'Team requests', t.requests, count(t.requests)),
      teamCard('hit_rate', 'Team hit rate', r === null ? '' : r, percent(r)),
      teamCard('cost', 'Team spent', t.cost, money(t.cost)),
      teamCard('saved', 'Team saved', t.saved, money(t.saved)),
      teamCard('daemons', 'Daemons', data.daemons.rows.length, count(data.daemons.rows.length))
    ]));
    append(box, el('div', { 'class': 'grid' }, [
      teamTable('By project', 'Project', 'team-projects', data.projects.rows, 'project',
        'data-team-project', null),
      teamTable('By daemon', 'Daemon', 'team-daemons', data.daemons.rows, 'daemon',
        'data-daemon', ship && ship.daemon)
    ]));
    document.body.setAttribute('data-team', 'ready');
  }

  function teamTable(title, dim, id, rows, field, attr, self) {
    var body = el('tbody');
    if (!rows.length) {
      body.appendChild(el('tr', null, el('td', { colspan: 5, 'class': 'muted' },
        'No requests across the team in this range.')));
    }
    rows.forEach(function (row) {
      var name = row[field] === null || row[field] === undefined ? '' : String(row[field]);
      var attrs = {};
      attrs[attr] = name;
      var hr = rate(row.cache_hits, row.requests);
      body.appendChild(el('tr', attrs, [
        el('th', { scope: 'row' }, [name || '–', name && name === self ?
          el('span', { 'class': 'badge self' }, 'this daemon') : null]),
        cell('requests', row.requests, count(row.requests)),
        cell('hit_rate', hr === null ? '' : hr, percent(hr)),
        cell('cost', row.cost, money(row.cost)),
        cell('saved', row.saved, money(row.saved))
      ]));
    });
    var head = el('tr', null, [dim, 'Requests', 'Hit rate', 'Spent', 'Saved'].map(function (c, i) {
      return el('th', { scope: 'col', 'class': i > 0 ? 'num' : null }, c);
    }));
    return el('div', null, [el('h3', null, title), el('div', { 'class': 'table-wrap' },
      el('table', { id: id }, [el('thead', null, head), body]))]);
  }

  // ---------------------------------------------------------------- wiring

  function onSubmit(ev) {
    ev.preventDefault();
    var q = new URLSearchParams();
    ['project', 'since', 'until'].forEach(function (name) {
      var v = ev.target.elements[name].value;
      if (v) q.set(name, v);
    });
    var s = q.toString();
    history.pushState(null, '', location.pathname + (s ? '?' + s : ''));
    load();
  }

  var resizeTimer = null;
  function onResize() {
    if (resizeTimer) clearTimeout(resizeTimer);
    resizeTimer = setTimeout(render, 150);
  }

  function takeToken() {
    state.token = adminToken();
    state.tokenTried = Boolean(state.token);
  }

  function start() {
    takeToken();
    $('filters').addEventListener('submit', onSubmit);
    $('f-project').addEventListener('change', function () {
      $('filters').requestSubmit();
    });
    window.addEventListener('popstate', load);
    window.addEventListener('hashchange', function () {
      takeToken();
      load();
    });
    window.addEventListener('resize', onResize);
    load();
  }

  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', start);
  } else {
    start();
  }
})();
