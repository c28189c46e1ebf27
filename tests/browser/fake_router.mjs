// DEVELOPMENT AID ONLY, not used by any test: a tiny stand-in for the router, to work on the web
// pages (libs/router/web/) without a cluster or before the router serves them. It serves the two
// pages, GET /v1/models, a streamed POST /v1/chat/completions that emits filler words, and a
// made-up GET /v1/internal/trace (docs: the trace format of issue 18) with runs on STAGES stages,
// including skipped, cancelled and stopped ones. The real browser test (pages_test.mjs, run by
// browser_test.sh) always runs against a real cluster.
//
//   node tests/browser/fake_router.mjs [--port 8090] [--stages 3] [--replicas 1] [--api-key K]
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const web = path.resolve(here, '../../libs/router/web');
const arg = (name, dflt) => {
  const i = process.argv.indexOf('--' + name);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const PORT = Number(arg('port', 8090));
const STAGES = Number(arg('stages', 3));
const REPLICAS = Number(arg('replicas', 1));
const API_KEY = arg('api-key', '');
// --upstream http://127.0.0.1:PORT: serve the pages from libs/router/web and pass everything else to
// a real router (to try edited pages on a real cluster without rebuilding the router).
const UPSTREAM = arg('upstream', '');

const subscribers = new Set();  // {res, requestId}
const nowUs = () => Math.round((performance.timeOrigin + performance.now()) * 1000);
function publish(ev) {
  const line = 'data: ' + JSON.stringify(ev) + '\n\n';
  for (const s of subscribers) {
    if (!s.requestId || s.requestId === ev.request_id) s.res.write(line);
  }
}

function sendJson(res, status, body, extra = {}) {
  res.writeHead(status, { 'Content-Type': 'application/json', ...extra });
  res.end(JSON.stringify(body));
}
function oaiError(res, status, type, message, param = null) {
  sendJson(res, status, { error: { message, type, param, code: null } });
}

const WORDS = ('the keeper climbed the stairs of the old lighthouse every evening and watched the ' +
  'ships pass by in the fog while the lamp turned slowly above the sea').split(' ');
let session = 0;

async function chat(req, res, body) {
  if (!Array.isArray(body.messages) || body.messages.length === 0) {
    return oaiError(res, 400, 'invalid_request_error', "'messages' must be a non-empty array", 'messages');
  }
  const id = req.headers['x-request-id'] || 'chatcmpl-fake' + Math.random().toString(16).slice(2, 10);
  const max = Math.min(body.max_tokens || 64, 4096);
  const mode = body.mode || 'pipeinfer';
  const replica = '127.0.0.1:' + (50053 + 10 * (session % REPLICAS));
  const sess = ++session;
  res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache', 'X-Request-Id': id });
  let gone = false;
  res.on('close', () => { gone = true; });
  const chunk = (delta, finish) => 'data: ' + JSON.stringify({
    id, object: 'chat.completion.chunk', created: Math.floor(Date.now() / 1000), model: 'demo-target',
    choices: [{ index: 0, delta, finish_reason: finish }] }) + '\n\n';
  await new Promise((r) => setTimeout(r, 120));  // prefill
  res.write(chunk({ role: 'assistant', content: '' }, null));
  let n = 0, run = 0, drafted = 0, accepted = 0;
  const stageUs = 25000;
  while (n < max && !gone) {
    // one "run": spans on every stage, then 1..4 tokens committed
    const t = nowUs();
    const spec = mode !== 'plain' && run % 4 !== 0;
    const dr = spec ? 4 : 0;
    let acc = spec ? Math.floor(Math.random() * 5) : 0;
    const roll = Math.random();
    const outcome = !spec ? 'computed' : roll < 0.15 ? 'skipped' : roll < 0.25 ? 'stopped' : roll < 0.3 ? 'cancelled' : 'computed';
    const spans = [];
    const last = outcome === 'skipped' ? 1 : outcome === 'stopped' ? 1 : outcome === 'cancelled' ? -1 : STAGES - 1;
    for (let s = 0; s <= last && s < STAGES; s++) {
      const end = s === last && outcome === 'stopped' ? t + s * stageUs + stageUs / 2 : t + (s + 1) * stageUs;
      spans.push({ stage: s, start_us: t + s * stageUs, end_us: end, batch_runs: 1 });
    }
    if (outcome !== 'computed') acc = 0;
    await new Promise((r) => setTimeout(r, (Math.max(last, 0) + 1) * stageUs / 1000));
    const toks = outcome === 'computed' ? 1 + acc : 0;
    for (let k = 0; k < toks && n < max && !gone; k++) {
      res.write(chunk({ content: (n ? ' ' : '') + WORDS[n % WORDS.length] }, null));
      n++;
    }
    drafted += dr; accepted += acc;
    const ev = { type: 'run', request_id: id, replica, session: sess, run: run++, kind: spec ? 'speculative' : 'plain',
                 tokens: 1 + dr, sent_us: t - 500, done_us: nowUs(), outcome, accepted: acc, drafted: dr,
                 committed: n, spans };
    if (outcome === 'skipped' || outcome === 'stopped') ev.outcome_stage = outcome === 'skipped' ? 2 % STAGES : 1;
    publish(ev);
  }
  publish({ type: 'request', request_id: id, status: gone ? 'CANCELLED' : 'OK', tokens: n, drafted, accepted });
  if (gone) return;
  res.write('data: ' + JSON.stringify({ id, object: 'chat.completion.chunk', created: Math.floor(Date.now() / 1000),
    model: 'demo-target', choices: [{ index: 0, delta: {}, finish_reason: n >= max ? 'length' : 'stop' }],
    usage: { prompt_tokens: 12, completion_tokens: n, total_tokens: 12 + n } }) + '\n\n');
  res.end('data: [DONE]\n\n');
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  if (API_KEY && url.pathname.startsWith('/v1/') && req.headers.authorization !== 'Bearer ' + API_KEY) {
    return oaiError(res, 401, 'invalid_request_error', 'Invalid API key.');
  }
  if (req.method === 'GET' && (url.pathname === '/' || url.pathname === '/pipeline')) {
    const file = url.pathname === '/' ? 'chat.html' : 'pipeline.html';
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
    return res.end(fs.readFileSync(path.join(web, file)));
  }
  if (UPSTREAM) {
    const up = new URL(UPSTREAM);
    const fwd = http.request({ host: up.hostname, port: up.port, path: req.url, method: req.method,
                               headers: req.headers }, (r) => {
      res.writeHead(r.statusCode, r.headers);
      r.pipe(res);
    });
    fwd.on('error', (e) => oaiError(res, 502, 'server_error', 'upstream: ' + e.message));
    res.on('close', () => fwd.destroy());
    req.pipe(fwd);
    return;
  }
  if (req.method === 'GET' && url.pathname === '/v1/models') {
    return sendJson(res, 200, { object: 'list', data: [{ id: 'demo-target', object: 'model', created: 0,
                                                           owned_by: 'pipeinfer', context_length: 2048 }] });
  }
  if (req.method === 'GET' && url.pathname === '/v1/internal/trace') {
    res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' });
    res.write('data: ' + JSON.stringify({ type: 'hello', stages: STAGES, replicas: REPLICAS, now_us: nowUs() }) + '\n\n');
    const sub = { res, requestId: url.searchParams.get('request_id') || '' };
    subscribers.add(sub);
    const ping = setInterval(() => res.write(': ping\n\n'), 5000);
    res.on('close', () => { subscribers.delete(sub); clearInterval(ping); });
    return;
  }
  if (req.method === 'POST' && url.pathname === '/v1/chat/completions') {
    let raw = '';
    req.on('data', (d) => { raw += d; });
    req.on('end', () => {
      let body;
      try { body = JSON.parse(raw); } catch (e) {
        return oaiError(res, 400, 'invalid_request_error', 'The body is not valid JSON.');
      }
      chat(req, res, body).catch((e) => { console.error(e); res.destroy(); });
    });
    return;
  }
  oaiError(res, 404, 'invalid_request_error', 'Unknown path ' + url.pathname);
});
server.listen(PORT, '127.0.0.1', () => console.log(`fake router (development aid) on http://127.0.0.1:${PORT}/`));
