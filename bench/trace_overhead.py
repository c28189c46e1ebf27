#!/usr/bin/env python3
"""Tracing overhead A/B on a running cluster: tokens/s of sequential chats with no trace viewer
vs with one viewer reading /v1/internal/trace, alternating rounds (the machine is noisy).
Usage: bench/trace_overhead.py HTTP_PORT ROUNDS REQUESTS_PER_ROUND  (prints one JSON object)"""
import json, sys, threading, time, urllib.request

port, rounds, per = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
base = "http://127.0.0.1:%d" % port

def chat(i):
    body = json.dumps({"messages": [{"role": "user", "content": "Tell me story number %d." % i}],
                       "max_tokens": 64, "temperature": 0}).encode()
    r = urllib.request.urlopen(urllib.request.Request(base + "/v1/chat/completions", data=body,
                               headers={"Content-Type": "application/json"}), timeout=120)
    return json.loads(r.read())["usage"]["completion_tokens"]

def round_tps(start):
    t0 = time.time(); toks = 0
    for i in range(per): toks += chat(start + i)
    return toks / (time.time() - t0)

class Viewer:
    def __enter__(self):
        self.stop = False; self.events = 0
        self.resp = urllib.request.urlopen(base + "/v1/internal/trace", timeout=300)
        def read():
            try:
                for line in self.resp:
                    if line.startswith(b"data: "): self.events += 1
                    if self.stop: break
            except (AttributeError, OSError, ValueError):
                pass  # the stream was closed under the reader
        self.t = threading.Thread(target=read, daemon=True); self.t.start()
        time.sleep(0.5)
        return self
    def __exit__(self, *a):
        self.stop = True; self.resp.close()

chat(0)  # warm-up
off, on, events = [], [], 0
for r in range(rounds):
    off.append(round_tps(1000 * r))
    with Viewer() as v:
        on.append(round_tps(1000 * r + 500))
        events += v.events
    time.sleep(1.0)
print(json.dumps({"no_viewer_tps": off, "viewer_tps": on, "viewer_events": events,
                  "no_viewer_mean": sum(off) / len(off), "viewer_mean": sum(on) / len(on)}))
