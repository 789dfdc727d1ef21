#!/usr/bin/env python3
"""Turns bench/run's raw measurements (one JSON file each) into a table and summary.json.

usage: summarize.py RAW_DIR SUMMARY_JSON
       summarize.py merge OUT.json ROUND.json...   (merge wrk rounds' latency histograms)
Exit status 1 if a check failed (a peer's hits reached the upstream, or errors in a run).
"""
import json
import os
import sys


def merge(out, inputs):
    rounds = []
    for p in inputs:
        try:
            with open(p) as f:
                rounds.append(json.load(f))
        except (OSError, ValueError):
            pass
    if not rounds:
        sys.exit(1)
    hist = {}
    for r in rounds:
        for v, c in r["hist"]:
            hist[v] = hist.get(v, 0) + c
    values = sorted(hist)
    total = sum(hist.values())

    def pct(p):
        rank = max(1, int(p / 100.0 * total + 0.5))
        seen = 0
        for v in values:
            seen += hist[v]
            if seen >= rank:
                return float(v)
        return float(values[-1]) if values else None

    m = {k: sum(r[k] for r in rounds) for k in
         ("requests", "duration_s", "err_connect", "err_read", "err_write", "err_status",
          "err_timeout", "upstream_delta")}
    m["rps"] = m["requests"] / m["duration_s"] if m["duration_s"] else 0.0
    m["rounds"] = len(rounds)
    m["rps_per_round"] = [r["rps"] for r in rounds]
    m["p99_us_per_round"] = [r["p99_us"] for r in rounds]
    for p in (50, 90, 99):
        m[f"p{p}_us"] = pct(p)
    m["mean_us"] = sum(v * c for v, c in hist.items()) / total if total else None
    m["max_us"] = float(values[-1]) if values else None
    with open(out, "w") as f:
        json.dump(m, f)


if len(sys.argv) > 1 and sys.argv[1] == "merge":
    merge(sys.argv[2], sys.argv[3:])
    sys.exit(0)

raw_dir, out_path = sys.argv[1], sys.argv[2]


def load(name):
    p = os.path.join(raw_dir, name + ".json")
    try:
        with open(p) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


run = load("run") or {}
problems = []


def lat(label, key):
    d = load(label)
    if not d or "error" in d:
        return None
    errs = d["err_status"] + d["err_read"] + d["err_connect"] + d["err_timeout"] + d["err_write"]
    if errs:
        problems.append(f"{label}: {errs} errors in {d['requests']} requests")
    return d[key]


def ms(us):
    return None if us is None else us / 1000.0


def sub(a, b):
    return None if a is None or b is None else a - b


def added(label, base, pct):
    return ms(sub(lat(label, f"p{pct}_us"), lat(base, f"p{pct}_us")))


streams = load("streams") or {}


def stream(target, what, pct):
    t = streams.get(target)
    if not t or not t[what]["n"]:
        return None
    return t[what][f"p{pct}"]


def stream_added(target, what, pct):
    return ms(sub(stream(target, what, pct), stream("direct", what, pct)))


def rss_mib(name, key="hwm_kb"):
    d = load(name)
    return None if not d or not d.get(key) else d[key] / 1024.0


mem = load("mem_chatcache") or {}
logical = None
disk_ratio = None
if mem:
    logical = mem["stats"]["bytes"] + mem.get("ledger_bytes", 0)
    disk_ratio = mem["du_kb"] * 1024.0 / logical if logical else None
ngx_mem = load("mem_nginx") or {}

# rows: (id, label, unit, {column: value}, target description, lambda -> met or None)
rows = []


NOISE_MS = 0.5  # a loopback baseline p99 above this means the machine disturbed the run


def row(rid, label, unit, chatcache=None, nginx=None, litellm=None, direct=None, target=None,
        met=None, noisy=False, relay=None):
    if met is not None and noisy:
        met = "noisy"
    rows.append(dict(id=rid, label=label, unit=unit, chatcache=chatcache, nginx=nginx,
                     litellm=litellm, relay=relay, direct=direct, target=target, met=met))


def spiky(label):
    """One at a time on loopback, p99 stays within a few times p50 unless other work preempts."""
    p50, p99 = lat(label, "p50_us"), lat(label, "p99_us")
    return p50 is not None and p99 is not None and p99 > 10 * p50


def env_noise(subject, reference):
    """Both the subject and the reference spiked: the machine, not the server, set the p99."""
    return spiky(subject) and spiky(reference)


def noisy_added(v, direct_p99):
    """An added p99 can't be judged when the direct baseline itself was disturbed."""
    return v is not None and (v < 0 or (direct_p99 is not None and direct_p99 > NOISE_MS))


def le(v, limit):
    return None if v is None or limit is None else v <= limit


def ge(v, limit):
    return None if v is None or limit is None else v >= limit


def added_rows(rid, run, label, limit_ms, with_litellm=False):
    """p50 and p99 of time added over direct for one kind of run; the p99 has the target."""
    for p in (50, 99):
        v = added(f"{run}_chatcache", f"{run}_direct", p)
        row(f"{rid}_added_p{p}", f"{label} added p{p}", "ms",
            chatcache=v, nginx=added(f"{run}_nginx", f"{run}_direct", p),
            litellm=added(f"{run}_litellm", f"{run}_direct", p) if with_litellm else None,
            relay=added(f"{run}_relay", f"{run}_direct", p),
            direct=ms(lat(f"{run}_direct", f"p{p}_us")),
            target=f"<= {limit_ms:g} ms" if p == 99 else None,
            met=le(v, limit_ms) if p == 99 else None,
            noisy=noisy_added(v, ms(lat(f"{run}_direct", "p99_us")))
            or env_noise(f"{run}_chatcache", f"{run}_nginx"))


added_rows("passthrough_credits", "credits", "pass-through GET /credits", 0.1)
added_rows("passthrough_chat", "passchat", "pass-through chat (--mode passthrough)", 0.1)
added_rows("miss", "miss", "recorded miss (distinct bodies)", 2.0, with_litellm=True)
for p in (50, 99):
    v = ms(lat("hit1_chatcache", f"p{p}_us"))
    n = ms(lat("hit1_nginx", f"p{p}_us"))
    row(f"hit_p{p}", f"cache hit latency, one at a time, p{p}", "ms", chatcache=v, nginx=n,
        litellm=ms(lat("hit1_litellm", f"p{p}_us")), direct=ms(lat("hit1_direct", f"p{p}_us")),
        target="<= nginx" if p == 99 else None, met=le(v, n) if p == 99 else None,
        noisy=(ms(lat("hit1_direct", "p99_us")) or 0) > NOISE_MS
        or env_noise("hit1_chatcache", "hit1_nginx"))
v = lat("hit64_chatcache", "rps")
n = lat("hit64_nginx", "rps")
row("hits_per_s_64", "cache hits/s, 64 connections, server on one core", "req/s", chatcache=v,
    nginx=n, litellm=lat("hit64_litellm", "rps"), direct=lat("hit64_direct", "rps"),
    target=">= nginx (open_file_cache)", met=ge(v, n))
for what, name in (("ttfb_us", "stream added time to first frame"),
                   ("frame_transit_us", "stream added per-frame delay")):
    for p in (50, 99):
        v = stream_added("chatcache", what, p)
        row(f"stream_{what[:-3]}_added_p{p}", f"{name} p{p}", "ms", chatcache=v,
            nginx=stream_added("nginx", what, p), litellm=stream_added("litellm", what, p),
            relay=stream_added("relay", what, p),
            direct=ms(stream("direct", what, p)),
            target="<= 0.2 ms" if p == 99 else None, met=le(v, 0.2) if p == 99 else None,
            noisy=noisy_added(v, ms(stream("direct", what, 99)))
            or all((stream(t, what, 99) or 0) > 10 * (stream(t, what, 50) or 1e9)
                   for t in ("chatcache", "nginx")))
v = rss_mib("mem_chatcache")
row("rss_100k_entries", f"peak RSS after {run.get('mem_entries', '?')} distinct entries", "MiB",
    chatcache=v, nginx=rss_mib("mem_nginx"), litellm=rss_mib("rss_litellm"),
    target="<= 64 MiB", met=le(v, 64.0))
v = rss_mib("rss_streams_chatcache")
row("rss_concurrent_streams", f"peak RSS with {run.get('concurrent_streams', '?')} concurrent streams",
    "MiB", chatcache=v, nginx=rss_mib("rss_streams_nginx"), target="<= 64 MiB", met=le(v, 64.0))
row("data_dir_mib", f"data dir on disk after {run.get('mem_entries', '?')} entries", "MiB",
    chatcache=mem.get("du_kb", 0) / 1024.0 if mem else None,
    nginx=ngx_mem.get("du_kb", 0) / 1024.0 if ngx_mem else None)
row("logical_mib", "logical size stored (entries + ledger)", "MiB",
    chatcache=logical / 1048576.0 if logical else None)
row("disk_over_logical", "data dir / logical size", "x", chatcache=disk_ratio,
    target="<= 2x", met=le(disk_ratio, 2.0))
big = run.get("big_entries", "?")
small = run.get("small_entries", "?")
for p in (50, 99):
    row(f"hit_small_p{p}", f"hit p{p} with {small} entries stored", "ms",
        chatcache=ms(lat("hitsmall_chatcache", f"p{p}_us")))
    row(f"hit_big_p{p}", f"hit p{p} with {big} entries stored", "ms",
        chatcache=ms(lat("hitbig_chatcache", f"p{p}_us")))
s99, b99 = ms(lat("hitsmall_chatcache", "p99_us")), ms(lat("hitbig_chatcache", "p99_us"))
r = b99 / s99 if s99 and b99 is not None else None
# p99 more than 10x p50 on a one-at-a-time loopback run: the machine was busy with other work.
row("hit_big_over_small_p99", f"hit p99 at {big} / at {small} entries", "x", chatcache=r,
    target="<= 1.5x", met=le(r, 1.5),
    noisy=spiky("hitsmall_chatcache") or spiky("hitbig_chatcache"))
fm, fb = load("fill_mem") or {}, load("fill_big") or {}
fill_s = fm.get("seconds", 0) + fb.get("seconds", 0)
row("fill_rate", f"fill rate, first {run.get('mem_entries', '?')} distinct misses, 64 at a time",
    "req/s", chatcache=fm.get("per_second"), nginx=(load("fill_nginx") or {}).get("per_second"))
row("fill_seconds", f"time to fill {big} entries (64 concurrent misses)", "s",
    chatcache=fill_s or None)

for r_ in rows:
    for peer in ("nginx", "litellm", "relay"):
        a, b = r_["chatcache"], r_[peer]
        r_[f"chatcache/{peer}"] = (a / b) if a is not None and b not in (None, 0) else None

# Checks: every peer's hits must never reach the upstream.
checks = {}
for name in ("chatcache", "nginx", "litellm"):
    for label in (f"hit1_{name}", f"hit64_{name}") + (("hitsmall_chatcache", "hitbig_chatcache")
                                                     if name == "chatcache" else ()):
        d = load(label)
        if d is None or "upstream_delta" not in d:
            continue
        checks[name] = checks.get(name, 0) + d["upstream_delta"]
for name, n in checks.items():
    if n:
        problems.append(f"{name}: the upstream saw {n} requests during its hit runs")
for k in ("conc_chatcache", "conc_nginx"):
    d = load(k)
    if d and d["ok"] != d["streams"]:
        problems.append(f"{k}: only {d['ok']} of {d['streams']} streams completed")
    if d and d.get("peak_open", d["streams"]) != d["streams"]:
        problems.append(f"{k}: at most {d['peak_open']} of {d['streams']} streams were open at once")
for t, d in streams.items():
    if d.get("errors"):
        problems.append(f"streams via {t}: {d['errors']} errors")
if streams.get("chatcache", {}).get("x_chatcache", {}).get("miss", 0) == 0 and streams:
    problems.append("streams via chatcache: no response said x-chatcache: miss")


def fmt(v):
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "met" if v else "MISSED"
    if isinstance(v, str):
        return v
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.3f}"


cols = ["chatcache", "nginx", "litellm", "relay", "direct", "chatcache/nginx", "chatcache/litellm",
        "chatcache/relay"]
head = ["figure", "unit"] + cols + ["target", "verdict"]
table = [head]
for r_ in rows:
    table.append([r_["label"], r_["unit"]] + [fmt(r_[c]) for c in cols] +
                 [r_["target"] or "", "" if r_["met"] is None and not r_["target"] else fmt(r_["met"])])
widths = [max(len(row_[i]) for row_ in table) for i in range(len(head))]
lines = []
for i, row_ in enumerate(table):
    lines.append("  ".join(c.ljust(widths[j]) if j < 2 else c.rjust(widths[j]) for j, c in enumerate(row_)))
    if i == 0:
        lines.append("  ".join("-" * w for w in widths))
print()
print("\n".join(lines))
print()
print("nginx column: proxy_cache peer for misses/hits/disk, no-cache peer for pass-through and streams.")
print("relay column: bench-relay, a bare proxy on hyper, hyper-util and tokio (no cache, no ledger).")
print("added = p(through server) - p(direct to the fake upstream), same run.")
ml = load("miss_litellm") or {}
print(f"litellm RSS: after its own runs (about {ml.get('requests', 0) + 150} entries cached), "
      "not after the 100k fill (too slow through LiteLLM).")
print("hits/s direct: the fake upstream answering wrk itself, both on core 1.")
print(f"upstream requests seen during hit runs: {checks}")
print(f"load average at end: {run.get('load_average')}")
print(f"verdict 'noisy': the direct (loopback) baseline p99 of that figure was over {NOISE_MS} ms, "
      "the added figure came out negative, or the one-at-a-time p99 was over 10x the p50 for both "
      "chatcache and the nginx reference (for hit p99 at 1M/1k: for either store): other "
      "work on the machine decided that percentile; see the per-round p99s in target/bench/raw.")
targets = [r_ for r_ in rows if r_["target"]]
print("targets: " + ", ".join(f"{r_['id']}={fmt(r_['met'])}" for r_ in targets))
for p in problems:
    print(f"CHECK FAILED: {p}")

summary = dict(run=run, rows=rows, checks=dict(upstream_requests_during_hits=checks),
               problems=problems, streams_raw=streams,
               targets={r_["id"]: r_["met"] for r_ in targets})
with open(out_path, "w") as f:
    json.dump(summary, f, indent=2)
sys.exit(1 if problems else 0)
