// Talking to the daemon: the admin token, the filters the address holds, and the JSON
// calls to the admin API. Every fetch goes to the daemon that served this page.

import { addDays, todayUtc } from './helpers.js';

export var API = '/_chatcache';
var DEFAULT_DAYS = 30;
var DAY_RE = /^\d{4}-\d{2}-\d{2}$/;

// ---------------------------------------------------------------- the admin token

// With admin.token set, the API wants it as a bearer token, which a page load cannot
// carry. The page is opened as /_chatcache/#token=…: a fragment never leaves the
// browser. The token is kept for this tab only and taken out of the address bar.
var TOKEN_KEY = 'chatcache-admin-token';

// The token the calls carry, and whether this page was opened with one.
var token = null;
var tokenTried = false;

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

// Takes the token from the address fragment, else from this tab's storage.
export function takeToken() {
  token = adminToken();
  tokenTried = Boolean(token);
}

// The API asked for a token: the one held (if any) was refused, so it is forgotten.
// True if this page was opened with one.
export function refuseToken() {
  if (token) forgetToken();
  token = null;
  return tokenTried;
}

// ---------------------------------------------------------------- the URL is the state

export function filters() {
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

export function query(f, extra) {
  var q = new URLSearchParams();
  (extra || []).forEach(function (kv) { q.append(kv[0], kv[1]); });
  if (f.since) q.set('since', f.since);
  if (f.until) q.set('until', f.until);
  if (f.project) q.set('project', f.project);
  return q.toString();
}

export function getJson(path) {
  var headers = { Accept: 'application/json' };
  if (token) headers.Authorization = 'Bearer ' + token;
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
