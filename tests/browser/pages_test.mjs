// The router's web pages in a real browser (Debian's Chromium driven by playwright-core).
// Run by browser_test.sh against a real cluster; by hand:
//   node tests/browser/pages_test.mjs --base-url http://127.0.0.1:8080 --out tests/browser/out \
//     --modules .cache/npm-browser/node_modules --stages 2
// Checks:
//   chat (/): a message streams an answer that grows over time, the stats line shows tokens/s, TTFT
//     and acceptance; a long answer stops growing after Stop and the page is ready again;
//   pipeline (/pipeline), while a pipeinfer chat runs in the other tab: run bars on every stage and at
//     least one cancelled, skipped or stopped run drawn (window.__pipelineState), pause works;
//   both: no console error, no page error, no request to another host than the router, no failed
//     request (except the ones the pages abort themselves);
// and saves chat.png and pipeline.png in --out.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';

function args() {
  const a = { baseUrl: '', out: '', modules: '', stages: 0, chromium: '/usr/bin/chromium' };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) {
    const k = argv[i].replace(/^--/, '').replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    if (!(k in a)) throw new Error('unknown argument ' + argv[i]);
    a[k] = k === 'stages' ? Number(argv[i + 1]) : argv[i + 1];
  }
  if (!a.baseUrl || !a.out || !a.modules || !a.stages) {
    throw new Error('usage: pages_test.mjs --base-url URL --out DIR --modules NODE_MODULES --stages N');
  }
  return a;
}

const opt = args();
const { chromium } = createRequire(path.resolve(opt.modules, '..', 'noop.js'))('playwright-core');
const base = new URL(opt.baseUrl);
fs.mkdirSync(opt.out, { recursive: true });

const problems = [];
const log = (...m) => console.log('[browser]', ...m);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
function check(cond, what) {
  if (!cond) throw new Error('check failed: ' + what);
  log('ok:', what);
}

function watch(page, name) {
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'assert') problems.push(`${name}: console ${m.type()}: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`${name}: page error: ${e.message}`));
}

// Clicks a button in one step inside the page, only if it is enabled at that moment (an answer can
// end between a check and a Playwright click, which would then wait for the button); true if clicked.
async function clickIfEnabled(page, selector) {
  return page.$eval(selector, (b) => {
    if (b.disabled) return false;
    b.click();
    return true;
  });
}

async function answerText(page, nth) {
  return page.$$eval('.msg.assistant .text', (els, i) => (els[i] ? els[i].textContent : ''), nth);
}

// Sends a message on the chat page and waits until its answer has text.
async function sendMessage(page, text) {
  const before = await page.$$eval('.msg.assistant', (e) => e.length);
  await page.fill('#prompt', text);
  await page.press('#prompt', 'Enter');
  await page.waitForFunction((n) => {
    const a = document.querySelectorAll('.msg.assistant');
    return a.length > n && a[n].querySelector('.text').textContent.length > 0;
  }, before, { timeout: 60000 });
  return before;
}

async function chatChecks(page, ctxLen) {
  const resp = await page.goto(new URL('/', base).href);
  check(resp && resp.status() === 200, `the router serves the chat page at / (HTTP ${resp && resp.status()})`);
  await page.waitForFunction(() => document.getElementById('model-name').textContent !== '…');
  const model = await page.textContent('#model-name');
  check(model && !/unavailable|unknown/.test(model), `chat page shows the model name (${model})`);
  await page.selectOption('#mode', 'pipeinfer');
  await page.fill('#temperature', '0');
  await page.fill('#max-tokens', '40');

  // 1. a streamed answer: its text grows over time
  const i = await sendMessage(page, 'Hello! Tell me about the sea.');
  const lengths = [];
  for (let k = 0; k < 400; k++) {
    const t = await answerText(page, i);
    if (!lengths.length || lengths[lengths.length - 1] !== t.length) lengths.push(t.length);
    if (await page.$eval('body', (b) => b.dataset.busy === 'false')) break;
    await sleep(25);
  }
  lengths.push((await answerText(page, i)).length);
  log('answer 1 length while streaming:', lengths.join(' '));
  check(new Set(lengths).size >= 3, 'the answer grew over time (streamed, at least 3 distinct lengths)');
  await page.waitForSelector('body[data-busy=false]');
  // acceptance arrives from the trace stream, possibly just after the last token
  await page.waitForFunction((n) => {
    const s = document.querySelectorAll('.msg.assistant .stats')[n];
    return s && s.dataset.acceptance !== '';
  }, i, { timeout: 10000 }).catch(() => {});
  const stats = await page.$$eval('.msg.assistant .stats', (els, n) => ({ text: els[n].textContent, ...els[n].dataset }), i);
  log('stats 1:', stats.text);
  check(/\d+(\.\d+)? tokens\/s/.test(stats.text), 'stats line shows tokens/s');
  check(/TTFT \d/.test(stats.text) && Number(stats.ttftMs) > 0, 'stats line shows TTFT');
  check(/acceptance \d+ %/.test(stats.text), 'stats line shows acceptance from the trace stream');

  // 2. a long answer, stopped
  // as long as the model's context allows after the first exchange (the demo model has 256 tokens)
  await page.fill('#max-tokens', String(Math.max(64, Math.min(1500, Math.floor(ctxLen / 2)))));
  let stopped = false;
  for (let attempt = 0; attempt < 3 && !stopped; attempt++) {
    const j = await sendMessage(page, 'Write a very long story about a lighthouse keeper and the ships.');
    await page.waitForFunction((n) => document.querySelectorAll('.msg.assistant .text')[n].textContent.length > 30,
                                j, { timeout: 30000 }).catch(() => {});
    if (await page.$eval('body', (b) => b.dataset.busy === 'false')) {
      log('answer ended before Stop; again, sampled');
      await page.fill('#temperature', '1');
      continue;
    }
    check(await page.isEnabled('#stop'), 'Stop is enabled while answering');
    if (!(await clickIfEnabled(page, '#stop'))) { log('answer ended before Stop; again'); continue; }
    await page.waitForSelector('body[data-busy=false]', { timeout: 5000 });
    const a = (await answerText(page, j)).length;
    await sleep(1500);
    const b = (await answerText(page, j)).length;
    log(`stopped answer: ${a} chars, ${b} chars 1.5 s later`);
    check(a === b, 'the answer stops growing after Stop');
    const s = await page.$$eval('.msg.assistant .stats', (els, n) => els[n].textContent, j);
    log('stats 2:', s);
    check(/finish: stopped/.test(s), 'the stats line says stopped');
    check(await page.isEnabled('#send') && !(await page.isEnabled('#stop')), 'the page is ready again (Send on, Stop off)');
    stopped = true;
  }
  check(stopped, 'a long answer was stopped');
  await page.screenshot({ path: path.join(opt.out, 'chat.png') });
  log('saved', path.join(opt.out, 'chat.png'));
}

async function pipelineChecks(chat, view, ctxLen) {
  const resp = await view.goto(new URL('/pipeline', base).href);
  check(resp && resp.status() === 200, `the router serves the pipeline view at /pipeline (HTTP ${resp && resp.status()})`);
  await view.waitForFunction(() => window.__pipelineState && window.__pipelineState.hello, null, { timeout: 15000 });
  const hello = await view.evaluate(() => window.__pipelineState.hello);
  log('hello:', JSON.stringify(hello));
  check(hello.stages === opt.stages, `hello names ${opt.stages} stages`);

  // a pipeinfer chat in the other tab; another one if it ends before the view has what it needs
  // (each in a new conversation, so that the history never fills the model's context)
  await chat.fill('#max-tokens', String(Math.max(64, Math.min(400, ctxLen - 64))));
  await chat.fill('#temperature', '0.8');
  const want = (n) => {
    const s = window.__pipelineState;
    const computed = new Set(s.drawn.filter((d) => d.cls !== 'cancelled').map((d) => d.stage));
    const dropped = s.drawn.filter((d) => d.cls === 'cancelled' || d.cls === 'stopped').length;
    let all = true;
    for (let i = 0; i < n; i++) all = all && computed.has(i);
    return all && dropped > 0;
  };
  let ok = false;
  for (let attempt = 0; attempt < 4 && !ok; attempt++) {
    await chat.waitForSelector('body[data-busy=false]');
    await clickIfEnabled(chat, '#clear');
    await sendMessage(chat, attempt % 2 ? 'Tell me a long story about a dragon.' : 'Describe a busy harbour at dawn in detail.');
    while (!ok && (await chat.$eval('body', (b) => b.dataset.busy === 'true'))) {
      ok = await view.evaluate(want, opt.stages);
      if (!ok) await sleep(100);
    }
    if (!ok) ok = await view.evaluate(want, opt.stages);
  }
  const summary = await view.evaluate(() => {
    const s = window.__pipelineState;
    const by = {};
    for (const d of s.drawn) by[d.cls + '@stage' + d.stage] = (by[d.cls + '@stage' + d.stage] || 0) + 1;
    return { drawn: s.drawn.length, by, counts: s.counts, runs: s.runs.length };
  });
  log('pipeline state:', JSON.stringify(summary));
  check(ok, 'run bars on every stage and at least one cancelled/skipped/stopped run drawn');
  check(summary.counts.speculative > 0, 'speculative runs received');

  // For the screenshot: a 2 s window (runs wide enough to show their accepted-token ticks), kept
  // full by the chat tab (a new message whenever the last one ended) and one more client beside
  // it, so that the stages batch runs of two sessions.
  await view.selectOption('#window', '2');
  const until = Date.now() + 2500;
  let busy = true;
  const client = async () => {
    while (busy) {
      const r = await fetch(new URL('/v1/chat/completions', base), {
        method: 'POST', headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ messages: [{ role: 'user', content: 'Tell me about the harbour.' }],
                               max_tokens: 96, temperature: 1, mode: 'pipeinfer' }) });
      await r.text();
    }
  };
  const others = client();
  while (Date.now() < until) {
    if (await chat.$eval('body', (b) => b.dataset.busy === 'false')) {
      if (!(await clickIfEnabled(chat, '#clear'))) continue;
      await sendMessage(chat, 'Tell me a long story about the lighthouse keeper.');
    }
    await sleep(100);
  }
  // pause freezes the view
  await view.click('#pause');
  await sleep(200);
  const frozen = await view.evaluate(() => window.__pipelineState.now_us);
  await sleep(400);
  const later = await view.evaluate(() => ({ now: window.__pipelineState.now_us, paused: window.__pipelineState.paused }));
  check(later.paused && later.now === frozen, 'Pause freezes the timeline');
  await view.screenshot({ path: path.join(opt.out, 'pipeline.png') });
  log('saved', path.join(opt.out, 'pipeline.png'));
  await view.click('#pause');
  check(!(await view.evaluate(() => window.__pipelineState.paused)), 'Resume restarts it');
  busy = false;
  await others;
  await clickIfEnabled(chat, '#stop');
  await chat.waitForSelector('body[data-busy=false]');
}

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'pipeinfer-chromium-'));
let context;
let failed = false;
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: opt.chromium,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1280, height: 800 },
  });
  log('browser:', context.browser() ? context.browser().version() : '(persistent context)');
  context.on('request', (r) => {
    const u = new URL(r.url());
    if (u.protocol === 'data:' || u.protocol === 'blob:') return;
    if (u.host !== base.host) problems.push(`request to another host: ${r.method()} ${r.url()}`);
  });
  context.on('requestfailed', (r) => {
    const why = (r.failure() && r.failure().errorText) || '';
    // The pages abort their own requests (Stop, a finished request's trace stream, leaving the page).
    if (/ERR_ABORTED/.test(why)) return;
    problems.push(`failed request: ${r.method()} ${r.url()}: ${why}`);
  });
  const models = await (await fetch(new URL('/v1/models', base))).json();
  const ctxLen = (models.data && models.data[0] && models.data[0].context_length) || 1024;
  const chat = context.pages()[0] || (await context.newPage());
  watch(chat, 'chat');
  await chatChecks(chat, ctxLen);
  const view = await context.newPage();
  watch(view, 'pipeline');
  await pipelineChecks(chat, view, ctxLen);
  await sleep(500);
} catch (e) {
  failed = true;
  console.error('[browser] FAILED:', e.stack || e.message);
  if (context) {  // what the pages showed when it failed
    for (const [i, p] of context.pages().entries()) {
      await p.screenshot({ path: path.join(opt.out, `failure-${i}.png`) }).catch(() => {});
    }
  }
} finally {
  if (context) await context.close().catch(() => {});
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
if (problems.length) {
  failed = true;
  console.error('[browser] problems:\n  ' + problems.join('\n  '));
}
console.log(failed ? '[browser] FAIL' : '[browser] PASS');
process.exit(failed ? 1 : 0);
