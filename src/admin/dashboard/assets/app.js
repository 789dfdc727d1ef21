// The chatcache dashboard: reads the admin API's JSON and draws it. No outside
// requests; every fetch goes to the daemon that served this page. This module loads the
// figures, hands them to the panels, and wires the filters; the panels are in spend.js,
// budgets.js and team.js, drawn with charts.js and helpers.js, fetched through api.js.

import { daysBetween, todayUtc, $ } from './helpers.js';
import { API, filters, getJson, query, refuseToken, takeToken } from './api.js';
import { renderHitRate, renderStacked } from './charts.js';
import { renderFilters, renderModels, renderProjects, renderRecent, renderReconcile, renderTotals } from './spend.js';
import { renderBudgets } from './budgets.js';
import { loadTeam } from './team.js';

var REFRESH_MS = 30000;

var state = { data: null, timer: null };

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
      var tried = refuseToken();
      document.body.setAttribute('data-state', 'locked');
      $('status').textContent = (tried ? 'That admin token was refused. ' : '') +
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
