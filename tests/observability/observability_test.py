#!/usr/bin/env python3
"""Observability artifacts against real tools and a real cluster (CTest: observability_test).

* The Grafana dashboard's structure (Grafana is not in Debian or npm in a usable form): variables,
  datasource, targets, gridPos without overlaps, unique ids, rate windows of $__rate_interval.
* `promtool check rules` on deploy/prometheus/pipeinfer-rules.yaml.
* A 2-stage `pipeinfer up --detach` cluster serves requests in every mode (HTTP, streaming, gRPC)
  and a few failing ones; a real `prometheus` with deploy/prometheus/prometheus.yml (targets
  rewritten, 1 s scrapes, rules loaded) scrapes it. Every dashboard expression, rule and
  docs/metrics.md example must parse and return data through the HTTP API (a comparison: its left
  side; absent(): its argument); rules must be healthy; alerts need a runbook.
* Each process's /metrics families equal docs/metrics.md's table for it (name, type, labels).

Usage: observability_test.py --build BUILD_DIR [--keep]. Exit 0 pass, 1 fail, 77 skip (binaries or
demo models missing). Everything it starts is stopped, even on failure or SIGTERM.
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "pipeinfer-dashboard.json")
RULES = os.path.join(ROOT, "deploy", "prometheus", "pipeinfer-rules.yaml")
PROM_CONFIG = os.path.join(ROOT, "deploy", "prometheus", "prometheus.yml")
METRICS_DOC = os.path.join(ROOT, "docs", "metrics.md")
MODEL = os.path.join(ROOT, "models", "demo-target-q8_0.gguf")
DRAFT_MODEL = os.path.join(ROOT, "models", "demo-draft-q8_0.gguf")
STAGES = 2
MODES = ("plain", "sync", "pipeinfer")
BOGUS_MODEL = "no-such-model"  # asked for once; must not become a label value
MODE_FIELD = "mode"  # a speculation-mode field for HTTP chats; ignored while the HTTP API has none
# (gRPC `pipeinfer complete --mode` covers every mode either way)
# What the dashboard's template variables become: Grafana's "All" (allValue .*) and a
# $__rate_interval that holds several 1 s scrapes.
SUBSTITUTIONS = {"$__rate_interval": "1m", "${datasource}": "prometheus", "$datasource": "prometheus",
                 "${model}": ".*", "$model": ".*", "${mode}": ".*", "$mode": ".*"}
DOC_SECTIONS = {"Every process": "common", "Router": "router", "Draft service": "draft",
                "Stage": "stage"}
CONST_LABELS = {"router": set(), "draft": {"model"}, "stage": {"stage", "model"}}

failures = []


class Interrupted(Exception):
    """A signal (SIGTERM, SIGINT, or SIGALRM at the deadline) stopped the test."""


def fail(what):
    failures.append(what)
    print("FAIL: " + what, flush=True)


def http(url, body=None, timeout=60):
    """(status, text) of a GET, or of a POST of `body` (a dict, sent as JSON)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as e:  # refused, reset, timed out
        return 0, str(e)


# ---------------------------------------------------------------- dashboard structure

def check_dashboard(dash):
    """Structural checks in place of rendering in Grafana. Returns [(panel title, expr)]."""
    exprs = []
    if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 36:
        fail("dashboard: schemaVersion missing or older than 36")
    for key in ("title", "uid"):
        if not dash.get(key):
            fail("dashboard: no " + key)
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    ds = variables.get("datasource", {})
    if ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        fail("dashboard: no datasource variable of type datasource/prometheus")
    for name in ("model", "mode"):
        v = variables.get(name)
        if not v or v.get("type") != "query" or not v.get("multi") or not v.get("includeAll"):
            fail("dashboard: variable %s must be a multi-value query variable with All" % name)
        elif v.get("datasource", {}).get("uid") != "${datasource}":
            fail("dashboard: variable %s does not use ${datasource}" % name)
    panels = []
    for p in dash.get("panels", []):
        panels.append(p)
        panels.extend(p.get("panels", []))  # panels of collapsed rows
    ids, titles, boxes = set(), set(), []
    for p in panels:
        title = p.get("title", "?")
        where = "dashboard panel '%s'" % title
        if not isinstance(p.get("id"), int) or p["id"] in ids:
            fail(where + ": id missing or not unique")
        ids.add(p.get("id"))
        g = p.get("gridPos", {})
        if not all(isinstance(g.get(k), int) for k in "xywh") or g["w"] <= 0 or g["h"] <= 0 \
                or g["x"] < 0 or g["y"] < 0 or g["x"] + g["w"] > 24:
            fail(where + ": bad gridPos %s" % g)
            continue
        for other_title, o in boxes:
            if g["x"] < o["x"] + o["w"] and o["x"] < g["x"] + g["w"] and \
                    g["y"] < o["y"] + o["h"] and o["y"] < g["y"] + g["h"]:
                fail(where + ": gridPos overlaps panel '%s'" % other_title)
        boxes.append((title, g))
        if p.get("type") == "row":
            continue
        if title in titles:
            fail(where + ": title not unique")
        titles.add(title)
        if p.get("datasource", {}).get("uid") != "${datasource}":
            fail(where + ": datasource is not ${datasource}")
        targets = p.get("targets") or []
        if not targets:
            fail(where + ": no targets")
        refids = set()
        for t in targets:
            if t.get("refId") in refids or not t.get("refId"):
                fail(where + ": refId missing or repeated")
            refids.add(t.get("refId"))
            if t.get("datasource", {}).get("uid") != "${datasource}":
                fail(where + " target %s: datasource is not ${datasource}" % t.get("refId"))
            expr = t.get("expr", "")
            if not expr.strip():
                fail(where + " target %s: no expr" % t.get("refId"))
                continue
            for m in re.finditer(r"\b(rate|irate|increase)\s*\(", expr):
                window = re.search(r"\[([^\]]*)\]", expr[m.end():])
                if not window or window.group(1) != "$__rate_interval":
                    fail(where + ": %s( without [$__rate_interval] in %s" % (m.group(1), expr))
            exprs.append((title, expr))
    text = json.dumps(dash)
    for needle in ("http_code grpc_code time_to_first_token inter_token_latency e2e_request_latency "
                   "request_queue_time generation_tokens num_accepted_tokens num_verifications "
                   "runs_launched runs_cancelled runs_computed runs_skipped runs_stopped "
                   "forward_seconds batch_runs kv_blocks_in_use num_requests_running "
                   "replica_healthy").split():
        if needle not in text:
            fail("dashboard: nothing shows %s" % needle)
    return exprs


def substitute(expr):
    for k in sorted(SUBSTITUTIONS, key=len, reverse=True):
        expr = expr.replace(k, SUBSTITUTIONS[k])
    return expr


# ---------------------------------------------------------------- PromQL helpers

def split_top(expr, words):
    """Splits `expr` at the top-level (outside brackets and strings) binary operators in `words`
    (set operators as words, comparisons as symbols). Returns [(operand, operator)]."""
    parts, depth, start, i, quote = [], 0, 0, 0, None
    while i < len(expr):
        c = expr[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'`":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0:
            op = None
            for w in words:
                if w.isalpha():
                    if re.match(r"%s(?![\w:])" % w, expr[i:]) and \
                            (i == 0 or not (expr[i - 1].isalnum() or expr[i - 1] in "_:")):
                        op = w
                        break
                elif expr.startswith(w, i):
                    op = w
                    break
            if op:
                parts.append((expr[start:i].strip(), op))
                i += len(op)
                start = i
                continue
        i += 1
    parts.append((expr[start:].strip(), None))
    return parts


def unwrap(expr):
    """Strips parentheses that enclose the whole expression."""
    while expr.startswith("(") and expr.endswith(")"):
        depth = 0
        for i, c in enumerate(expr):
            depth += c == "("
            depth -= c == ")"
            if depth == 0 and i < len(expr) - 1:
                return expr
        expr = expr[1:-1].strip()
    return expr


def data_operands(expr):
    """The sub-expressions that must return data for `expr` to be meaningful: the operands of
    and/or (not the filter on the right of unless), the left side of a filtering comparison, the
    argument of absent()."""
    expr = unwrap(expr.strip())
    ops = split_top(expr, ("and", "or", "unless"))
    if len(ops) > 1:
        return [x for i, (operand, _) in enumerate(ops)
                if i == 0 or ops[i - 1][1] != "unless" for x in data_operands(operand)]
    cmp = split_top(expr, ("==", "!=", ">=", "<=", ">", "<"))
    if len(cmp) > 1:
        right = cmp[1][0]
        if right.startswith("bool "):
            return [expr]  # `bool` comparisons return 0/1 samples, so the whole has data
        return data_operands(cmp[0][0])
    m = re.match(r"absent(_over_time)?\s*\((.*)\)$", expr, re.S)
    if m:
        return data_operands(m.group(2))
    return [expr]


class Prometheus:
    def __init__(self, url):
        self.url = url

    def api(self, path, **params):
        q = urllib.parse.urlencode(params)
        status, text = http("%s/api/v1/%s?%s" % (self.url, path, q), timeout=30)
        try:
            return json.loads(text)
        except ValueError:
            return {"status": "error", "error": "HTTP %d: %s" % (status, text[:200])}

    def query(self, expr):
        """(ok, number of samples or error text)."""
        r = self.api("query", query=expr)
        if r.get("status") != "success":
            return False, "%s: %s" % (r.get("errorType", "error"), r.get("error"))
        d = r["data"]
        return True, (1 if d["resultType"] in ("scalar", "string") else len(d["result"]))

    def check(self, what, expr):
        """Fails unless `expr` parses and its data operands return data."""
        ok, res = self.query(expr)
        if not ok:
            fail("%s: does not evaluate: %s\n    expr: %s" % (what, res, expr))
            return
        for operand in data_operands(expr):
            ok, n = self.query(operand)
            if not ok or n == 0:
                fail("%s: no data for %s\n    expr: %s" % (what, operand, expr))


# ---------------------------------------------------------------- docs/metrics.md

def parse_doc_tables(text):
    """{section: {family: (type, labels, promql)}} for the catalogue sections."""
    out, section = {}, None
    for line in text.splitlines():
        m = re.match(r"#{2,4}\s+(.*?)\s*$", line)
        if m:
            section = DOC_SECTIONS.get(m.group(1))
            continue
        if not section or not line.startswith("| `"):
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        name = cells[0].strip("`")
        labels = {l.strip() for l in re.sub(r"\(.*?\)", "", cells[2]).split(",") if l.strip()}
        promql = cells[4].strip("`") if len(cells) > 4 else ""
        out.setdefault(section, {})[name] = (cells[1], labels, promql)
    return out


def parse_exposition(text):
    """{family: (type, set of label names)} of a /metrics page."""
    fams = {}
    for line in text.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)", line)
        if m:
            fams[m.group(1)] = (m.group(2), set())
            continue
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s", line)
        if not m:
            continue
        name = m.group(1)
        fam = name if name in fams else re.sub(r"_(bucket|sum|count)$", "", name)
        if fam in fams:
            labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', m.group(3) or ""))
            fams[fam][1].update(labels - {"le"})
    return fams


def compare_docs(docs, process, address):
    status, text = http("http://%s/metrics" % address)
    if status != 200:
        fail("%s /metrics at %s: HTTP %d" % (process, address, status))
        return
    exposed = parse_exposition(text)
    documented = dict(docs.get("common", {}))
    documented.update(docs.get(process, {}))
    where = "docs/metrics.md vs %s /metrics (%s)" % (process, address)
    for fam in sorted(set(exposed) - set(documented)):
        fail("%s: %s is exposed but not documented" % (where, fam))
    for fam in sorted(set(documented) - set(exposed)):
        fail("%s: %s is documented but not exposed" % (where, fam))
    for fam in sorted(set(documented) & set(exposed)):
        doc_type, doc_labels, _ = documented[fam]
        typ, labels = exposed[fam]
        if doc_type != typ:
            fail("%s: %s is a %s, documented as %s" % (where, fam, typ, doc_type))
        if labels and not labels <= doc_labels | CONST_LABELS[process]:
            fail("%s: %s has labels %s, documented %s" % (where, fam, sorted(labels),
                                                          sorted(doc_labels)))
        if labels and not doc_labels - CONST_LABELS[process] <= labels:
            fail("%s: %s documents labels %s it does not have (has %s)" %
                 (where, fam, sorted(doc_labels - labels), sorted(labels)))


# ---------------------------------------------------------------- processes

def free_port_block(n):
    """The first of `n` consecutive free TCP ports on loopback."""
    for _ in range(200):
        base = random.randint(20000, 60000 - n)
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no block of %d free ports" % n)


def run(argv, timeout=120):
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    return r.returncode, r.stdout.decode("utf-8", "replace")


def start_cluster(bindir, work):
    state = os.path.join(work, "cluster.json")
    for attempt in range(3):
        base = free_port_block(2 * STAGES + 4)  # stages, draft, router gRPC, HTTP, metrics
        rc, out = run([os.path.join(bindir, "pipeinfer"), "up", "--model", MODEL,
                       "--draft-model", DRAFT_MODEL, "--mode", "pipeinfer",
                       "--stages", str(STAGES), "--threads", "1", "--kv-tokens", "2048",
                       "--base-port", str(base), "--http-port", str(base + STAGES + 2),
                       "--metrics-base-port", str(base + STAGES + 3), "--detach",
                       "--state", state, "--log-dir", os.path.join(work, "logs")], timeout=180)
        if rc == 0:
            with open(state) as f:
                return state, json.load(f)["endpoints"]
        print("pipeinfer up failed (attempt %d):\n%s" % (attempt + 1, out), flush=True)
    raise RuntimeError("pipeinfer up failed 3 times")


def send_requests(bindir, ep):
    """Chats in every mode over HTTP (plain and streaming) and gRPC, plus three failing ones."""
    url = "http://%s/v1/chat/completions" % ep["router_http"]
    msgs = [{"role": "user", "content": "Tell me about Mr. Darcy."}]
    for mode in MODES:
        for stream in (False, True):
            status, text = http(url, {"messages": msgs, "max_tokens": 12, "temperature": 0,
                                      "stream": stream, MODE_FIELD: mode})
            ok = status == 200 and ("[DONE]" in text if stream else '"choices"' in text)
            if not ok:
                fail("chat (%s, stream=%s): HTTP %d %s" % (mode, stream, status, text[:300]))
        rc, out = run([os.path.join(bindir, "pipeinfer"), "complete", "--router",
                       ep["router_grpc"], "--prompt", "It is a truth universally acknowledged",
                       "--max-tokens", "12", "--temperature", "0", "--mode", mode])
        if rc != 0:
            fail("pipeinfer complete --mode %s: exit %d\n%s" % (mode, rc, out))
    status, _ = http(url, {"model": BOGUS_MODEL, "messages": msgs, "max_tokens": 4})
    if status != 404:
        fail("chat with an unknown model: HTTP %d, expected 404" % status)
    status, _ = http(url, {"messages": msgs, "max_tokens": 4, "temperature": -1})
    if status != 400:
        fail("chat with temperature -1: HTTP %d, expected 400" % status)
    rc, _ = run([os.path.join(bindir, "pipeinfer"), "complete", "--router", ep["router_grpc"],
                 "--prompt", "x", "--max-tokens", "4", "--temperature", "-1"])
    if rc == 0:
        fail("pipeinfer complete --temperature -1 succeeded")


def prometheus_config(ep, work):
    with open(PROM_CONFIG) as f:
        cfg = f.read()
    targets = {"pipeinfer-router": [ep["router_http"]], "pipeinfer-draft": [ep["draft_metrics"]],
               "pipeinfer-stage": ep["stage_metrics"]}
    for job, addrs in targets.items():
        pattern = r"(job_name: %s\n\s+static_configs:\n\s+- targets: )\[[^\]]*\]" % re.escape(job)
        cfg, n = re.subn(pattern, lambda m: m.group(1) + json.dumps(addrs), cfg)
        if n != 1:
            raise RuntimeError("%s: no single targets list for job %s" % (PROM_CONFIG, job))
    for key in ("scrape_interval", "evaluation_interval"):
        cfg, n = re.subn(r"(\n\s+%s:) \S+" % key, r"\1 1s", cfg)
        if n != 1:
            raise RuntimeError("%s: no global %s" % (PROM_CONFIG, key))
    cfg, n = re.subn(r"(rule_files:\n\s+- )pipeinfer-rules.yaml", r"\g<1>" + RULES, cfg)
    if n != 1:
        raise RuntimeError("%s: rule_files does not name pipeinfer-rules.yaml" % PROM_CONFIG)
    path = os.path.join(work, "prometheus.yml")
    with open(path, "w") as f:
        f.write(cfg)
    return path


def wait_for(what, predicate, timeout):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.5)
    fail("timed out waiting for " + what)
    return False


def rules_evaluated(prom):
    r = prom.api("rules")
    groups = r.get("data", {}).get("groups", []) if r.get("status") == "success" else []
    rules = [x for g in groups for x in g["rules"]]
    return rules and all(not x.get("lastEvaluation", "0001").startswith("0001") for x in rules)


def check_dashboard_queries(prom, dash_exprs, variables):
    """Every panel expression, and every template variable's label_values(), against data."""
    for title, expr in dash_exprs:
        prom.check("dashboard panel '%s'" % title, substitute(expr))
    for v in variables:
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = re.match(r"label_values\((.*),\s*(\w+)\)$", q)
        if not m:
            fail("dashboard variable %s: not label_values(metric, label): %s" % (v["name"], q))
            continue
        r = prom.api("query", query="count by (%s) (%s)" % (m.group(2), substitute(m.group(1))))
        values = {s["metric"].get(m.group(2), "") for s in r.get("data", {}).get("result", [])}
        values.discard("")
        if not values:
            fail("dashboard variable %s: no values for %s" % (v["name"], q))
        if v["name"] == "mode" and not set(MODES) <= values:
            fail("dashboard variable mode: values %s, expected %s" % (sorted(values), MODES))


def check_rules(prom, rule_count, anchors):
    """Every rule as Prometheus loaded it: healthy, with data; every alert with its runbook."""
    groups = prom.api("rules").get("data", {}).get("groups", [])
    rules = [x for g in groups for x in g["rules"]]
    if len(rules) != rule_count:
        fail("Prometheus loaded %d rules, promtool found %d" % (len(rules), rule_count))
    for rule in rules:
        name = rule.get("name")
        if rule.get("health") != "ok" or rule.get("lastError"):
            fail("rule %s: health %s %s" % (name, rule.get("health"), rule.get("lastError", "")))
        prom.check("%s rule %s" % (rule["type"], name), rule["query"])
        if rule["type"] == "recording":
            prom.check("recorded series %s" % name, name)
        else:
            if rule.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                fail("alert %s: no severity label" % name)
            ann = rule.get("annotations", {})
            if not ann.get("summary") or not ann.get("description"):
                fail("alert %s: summary or description annotation missing" % name)
            if name.lower() not in anchors:
                fail("alert %s: no runbook section '### %s' in docs/metrics.md" % (name, name))
            elif "docs/metrics.md#" + name.lower() not in ann.get("description", ""):
                fail("alert %s: description does not link its runbook" % name)


def check_values(prom):
    """The requests sent are counted where the dashboard looks: a zero series would pass the
    'returns data' checks above, so the sums must reach what was sent."""
    expect = [("sum(pipeinfer_e2e_request_latency_seconds_count)", 3 * len(MODES)),
              ("sum(pipeinfer_router_http_requests_total{http_code=\"404\"})", 1),
              ("sum(pipeinfer_router_grpc_requests_total{grpc_code=\"INVALID_ARGUMENT\"})", 1),
              ("sum(pipeinfer_spec_decode_num_draft_tokens_total)", 1),
              ("sum(pipeinfer_stage_runs_computed_total)", 2 * STAGES)]
    expect += [('sum(pipeinfer_router_grpc_requests_total{mode="%s", grpc_code="OK"})' % m, 1)
               for m in MODES]
    for expr, least in expect:
        r = prom.api("query", query=expr).get("data", {}).get("result", [])
        value = float(r[0]["value"][1]) if r else 0
        if value < least:
            fail("%s = %g after the requests, expected at least %d" % (expr, value, least))


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", required=True, help="CMake build directory (with bin/)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    ap.add_argument("--deadline", type=int, default=200,
                    help="seconds after which the test stops everything and fails")
    args = ap.parse_args()
    bindir = os.path.join(os.path.abspath(args.build), "bin")
    for tool in ("prometheus", "promtool"):
        if not shutil.which(tool):
            print("FAIL: %s is not installed (./scripts/setup.sh installs it)" % tool)
            return 1
    missing = [p for p in (os.path.join(bindir, "pipeinfer"), os.path.join(bindir, "pipeinfer-router"),
                           MODEL, DRAFT_MODEL) if not os.path.exists(p)]
    if missing:
        print("SKIP: missing %s" % ", ".join(missing))
        return 77

    # Static checks.
    with open(DASHBOARD) as f:
        dash = json.load(f)
    dash_exprs = check_dashboard(dash)
    variables = [v for v in dash.get("templating", {}).get("list", []) if v.get("type") == "query"]
    rc, out = run(["promtool", "check", "rules", RULES])
    print(out.strip())
    if rc != 0:
        fail("promtool check rules %s: exit %d" % (RULES, rc))
    m = re.search(r"SUCCESS: (\d+) rules found", out)
    rule_count = int(m.group(1)) if m else -1
    with open(METRICS_DOC) as f:
        doc_text = f.read()
    docs = parse_doc_tables(doc_text)
    for section in DOC_SECTIONS.values():
        if not docs.get(section):
            fail("docs/metrics.md: no table for %s" % section)
    anchors = {re.sub(r"[^a-z0-9-]", "", h.strip().lower().replace(" ", "-"))
               for h in re.findall(r"^#+ (.*)$", doc_text, re.M)}

    work = tempfile.mkdtemp(prefix="observability_test.")
    prom_proc, state = None, None
    def interrupt(signum, _):
        raise Interrupted("stopped by %s" % signal.Signals(signum).name)
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    # CTest kills the test at its TIMEOUT (240 s) without a chance to clean up: give up earlier.
    signal.signal(signal.SIGALRM, interrupt)
    signal.alarm(args.deadline)
    try:
        state, ep = start_cluster(bindir, work)
        print("cluster up: %s" % json.dumps(ep), flush=True)
        prom_port = free_port_block(1)
        prom_log = open(os.path.join(work, "prometheus.log"), "w")  # closed at exit
        prom_proc = subprocess.Popen(
            ["prometheus", "--config.file=" + prometheus_config(ep, work),
             "--storage.tsdb.path=" + os.path.join(work, "tsdb"),
             "--web.listen-address=127.0.0.1:%d" % prom_port, "--log.level=warn"],
            stdout=prom_log, stderr=subprocess.STDOUT)
        prom = Prometheus("http://127.0.0.1:%d" % prom_port)

        def targets_up():
            r = prom.api("targets")
            active = r.get("data", {}).get("activeTargets", []) if r.get("status") == "success" else []
            return len(active) == STAGES + 2 and all(t["health"] == "up" for t in active)
        if not wait_for("Prometheus to scrape all %d targets" % (STAGES + 2), targets_up, 60):
            raise RuntimeError("targets: " + json.dumps(prom.api("targets"))[:3000])
        send_requests(bindir, ep)
        time.sleep(5)  # several scrapes after the last request
        wait_for("every rule to be evaluated", lambda: rules_evaluated(prom), 30)
        time.sleep(2)  # one more rule evaluation after the recorded series exist

        check_values(prom)
        check_dashboard_queries(prom, dash_exprs, variables)
        check_rules(prom, rule_count, anchors)
        ok, n = prom.query('{model="%s"}' % BOGUS_MODEL)
        if not ok or n:
            fail("a model id a client sent became a label value (unbounded cardinality): %s" % n)
        for section, fams in sorted(docs.items()):
            for fam, (_, _, promql) in sorted(fams.items()):
                if promql:
                    prom.check("docs/metrics.md example for %s" % fam, promql)
                else:
                    fail("docs/metrics.md: %s has no PromQL example" % fam)

        compare_docs(docs, "router", ep["router_http"])
        compare_docs(docs, "draft", ep["draft_metrics"])
        for address in ep["stage_metrics"]:
            compare_docs(docs, "stage", address)
    except Exception as e:  # noqa: BLE001 - report any set-up failure as a test failure
        fail("%s: %s" % (type(e).__name__, e))
    finally:
        signal.alarm(0)
        if prom_proc:
            prom_proc.terminate()
            try:
                prom_proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                prom_proc.kill()
                prom_proc.wait()
        if state and os.path.exists(state):
            rc, out = run([os.path.join(bindir, "pipeinfer"), "down", "--state", state], 60)
            if rc != 0:
                fail("pipeinfer down: exit %d\n%s" % (rc, out))
        if failures:
            for log in sorted(os.listdir(os.path.join(work, "logs"))) \
                    if os.path.isdir(os.path.join(work, "logs")) else []:
                with open(os.path.join(work, "logs", log), errors="replace") as f:
                    print("---- tail of %s\n%s" % (log, "".join(f.readlines()[-15:])))
        if args.keep:
            print("kept " + work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    if failures:
        print("\n%d check(s) failed:" % len(failures))
        for f in failures:
            print("  - " + f.splitlines()[0])
        return 1
    print("PASS: %d dashboard expressions, %d rules, docs/metrics.md and /metrics agree" %
          (len(dash_exprs), rule_count))
    return 0


if __name__ == "__main__":
    sys.exit(main())
