"""metrics.py: the server's Prometheus metrics, what GET /metrics answers: counters of requests,
tokens, the guard's decisions and the private items masked in the log, histograms (time to first
token, tokens/s, batch size), gauges of the queue and the batch, in Prometheus' text format
(what Prometheus scrapes and Grafana draws).

Imported by serve.py, which counts each request once it is answered and renders the text on
GET /metrics. Imports only the standard library.
"""
import collections
import threading


class Histogram:
    """A Prometheus histogram: how many observations fell at or below each bound, their
    sum, count."""

    def __init__(self, bounds):
        self.bounds, self.counts, self.sum, self.count = bounds, [0] * len(bounds), 0.0, 0

    def observe(self, value):
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
        self.sum, self.count = self.sum + value, self.count + 1

    def lines(self, name):
        out = [f'{name}_bucket{{le="{b:g}"}} {n}' for b, n in zip(self.bounds, self.counts)]
        return out + [f'{name}_bucket{{le="+Inf"}} {self.count}', f"{name}_sum {self.sum:.6f}",
                      f"{name}_count {self.count}"]


class Metrics:
    """What GET /metrics reports, in Prometheus' text format (what Prometheus scrapes and Grafana
    draws): requests by status, tokens, time to first token, tokens/s, queue and batch."""

    HISTOGRAMS = {  # name: (help, bucket bounds)
        "ttft": ("seconds from a request's arrival to its first token", (
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)),
        "tokens_per_s": ("a request's tokens per second after its first", (
            1, 5, 10, 25, 50, 100, 200, 400, 800, 1600)),
        "batch_size": ("requests advanced together, per decoding step", (1, 2, 4, 8, 16, 32, 64)),
    }

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = collections.Counter()  # (path, status) -> count
        self.tokens = collections.Counter()  # "prompt", "completion" -> count
        self.hist = {name: Histogram(bounds) for name, (_, bounds) in self.HISTOGRAMS.items()}
        self.guard = collections.Counter()  # (stage, action) -> count: guard.py's decisions
        self.masks = collections.Counter()  # kind -> private items masked in the request log

    def observe(self, name, value):
        with self.lock:
            self.hist[name].observe(value)

    def request(self, path, status, prompt_tokens=0, completion_tokens=0):
        with self.lock:
            self.requests[path, status] += 1
            self.tokens["prompt"] += prompt_tokens
            self.tokens["completion"] += completion_tokens

    def guard_decision(self, stage, action):
        with self.lock:
            self.guard[stage, action] += 1

    def masked(self, kind, n=1):
        with self.lock:
            self.masks[kind] += n

    def render(self, batcher):
        lines = ["# HELP slm_requests_total HTTP requests answered, by path and status.",
                 "# TYPE slm_requests_total counter"]
        with self.lock:
            lines += [f'slm_requests_total{{path="{p}",status="{s}"}} {n}'
                      for (p, s), n in sorted(self.requests.items())]
            for kind in ("prompt", "completion"):
                name = f"slm_{kind}_tokens_total"
                lines += [f"# HELP {name} {kind.capitalize()} tokens of answered requests.",
                          f"# TYPE {name} counter", f"{name} {self.tokens[kind]}"]
            lines += ["# HELP slm_guard_decisions_total Guard decisions, by stage and action.",
                      "# TYPE slm_guard_decisions_total counter"]
            lines += [f'slm_guard_decisions_total{{stage="{s}",action="{a}"}} {n}'
                      for (s, a), n in sorted(self.guard.items())]
            lines += ["# HELP slm_log_masked_total Private items masked in the request log.",
                      "# TYPE slm_log_masked_total counter"]
            lines += [f'slm_log_masked_total{{kind="{k}"}} {n}'
                      for k, n in sorted(self.masks.items())]
            for name, (text, _) in self.HISTOGRAMS.items():
                unit = "_seconds" if name == "ttft" else ""
                full = f"slm_{name}{unit}"
                lines += [f"# HELP {full} {text.capitalize()}.", f"# TYPE {full} histogram"]
                lines += self.hist[name].lines(full)
        gauges = (("queue_depth", "Requests waiting for a place in the batch.",
                   len(batcher.waiting)),
                  ("batch_rows", "Requests being answered now.", len(batcher.active)),
                  ("max_batch", "The most requests answered together.", batcher.max_batch))
        for name, text, value in gauges:
            lines += [f"# HELP slm_{name} {text}", f"# TYPE slm_{name} gauge",
                      f"slm_{name} {value}"]
        return "\n".join(lines) + "\n"
