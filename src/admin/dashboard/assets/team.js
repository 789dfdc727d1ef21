// The Team panel, below the totals: the team ledger's figures and this daemon's shipping
// to it. Drawn only where the daemon has a team ledger.

import { append, cell, clear, count, el, money, percent, rate, $ } from './helpers.js';
import { getJson, query } from './api.js';

// Which load the latest team figures belong to: an answer to an older one is dropped.
var teamSeq = 0;

// With a team ledger (health's team_ledger), a Team panel below the totals: spend across
// every daemon, read from PostgreSQL, by project and by daemon, for the same range and
// project; and how this daemon's shipping goes. Without one, nothing of it is drawn.
export function loadTeam(f) {
  var seq = ++teamSeq;
  var current = function () { return seq === teamSeq; };
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
