"""serve.py: an OpenAI-compatible HTTP server for any run directory, with continuous batching
(the serving half of book chapter 11; chat.py is the terminal half).

    python serve.py out/dpo                   # POST http://127.0.0.1:8000/v1/chat/completions
    python serve.py out/dpo-int8 --port 8001  # any run directory: float or INT8, MiniMind or GPT
    python serve.py out/dpo --host 0.0.0.0 --api-key SECRET --max-batch 16   # on the network

Reading order: the flags -> checking a request (OpenAI's JSON objects and error object) -> the
batch that decodes many requests at once -> the routes (JSON answers, server-sent events) ->
main. Only the standard library serves HTTP: no web framework, nothing to install.

It is run, not imported: nothing imports it but its tests (tests/test_serve.py; the server
benchmark starts it as a subprocess). Imports: chat.py (Engine, Answer, make_generator and the
flags both commands share; the chat template comes through the Engine, from sft.py), decode.py
(the batched decoder), minimind.py (the sampling step and the window crop), metrics.py (what
GET /metrics reports), completions.py (POST /v1/completions), guard.py (API keys, the request
log with private data masked, --guard's blocklist on requests and answers) and rundir.py."""
import collections
import json
import os
import queue
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

import completions
import decode
import minimind
import guard
from chat import Answer, Engine, EngineConfig, check_sampling, make_generator
from metrics import Metrics
from rundir import UserError, check_device, option, parse_config, run_cli


# ---------------------------------------------------------------------------------------------
# Configuration: chat.py's flags for the run and its sampling defaults, and the server's own
# ---------------------------------------------------------------------------------------------
@dataclass
class ServeConfig(EngineConfig):
    host: str = option("127.0.0.1",
                       "server address (0.0.0.0 exposes it to your network; needs a key)")
    port: int = option(8000, "server port (0: any free port)")
    max_body: int = option(1_000_000, "largest request body the server accepts, in bytes")
    max_batch: int = option(8, "requests the server decodes together")
    max_queue: int = option(32, "requests that may wait for a place in the batch; more get 503")
    api_key: str = option("", "require 'Authorization: Bearer KEY' (default: $SLM_API_KEY)")
    insecure: bool = option(False, "allow listening beyond 127.0.0.1 without an API key")
    request_log: str = option("-", "JSON-lines request log: a file, - for stderr, empty for none")
    log_content: bool = option(False, "put the messages and answers in the request log too")
    guard: str = option("", "blocklist file (words, phrases, re:PATTERN) checked on requests "
                        "and answers, guard.py")
    refusal_message: str = option("I can't help with that.", "the answer to what --guard blocks")
    guard_hold: int = option(64, "characters of a streamed answer held back for re: patterns")


def parse_args(argv=None, overrides=None):
    """rundir.parse_config's flags (RUN_DIR positional), with the values checked."""
    cfg = check_sampling(parse_config(ServeConfig, argv, None, overrides))
    if cfg.max_body < 1 or cfg.max_batch < 1 or cfg.max_queue < 0:
        raise UserError("--max-body and --max-batch must be at least 1, --max-queue at least 0")
    cfg.api_key = cfg.api_key or os.environ.get("SLM_API_KEY", "")
    return cfg


# ---------------------------------------------------------------------------------------------
# The HTTP server: the parts of OpenAI's chat completions API that clients use
# ---------------------------------------------------------------------------------------------
class ApiError(Exception):
    """A request the server refuses: an HTTP status and OpenAI's error object."""

    def __init__(self, status, message, param=None, code=None, kind="invalid_request_error",
                 headers=()):
        super().__init__(message)
        self.status, self.body = status, {"error": {"message": message, "type": kind,
                                                    "param": param, "code": code}}
        self.headers = list(headers)  # extra response headers (WWW-Authenticate, Retry-After)


ROLE_NAMES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def number(body, key, default, lo, hi, integer=False):
    """body[key] checked: a number (an int where integer) in [lo, hi], or the default if
    absent/null."""
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise ApiError(400, f"'{key}' must be {'an integer' if integer else 'a number'}", key,
                       "invalid_type")
    if not lo <= value <= hi:
        raise ApiError(400, f"'{key}' must be between {lo} and {hi}; got {value}", key,
                       "invalid_value")
    return value


def parse_request(body, cfg, min_tokens=1):
    """Check a chat completion request; returns the messages and the sampling settings. Fields
    OpenAI defines that a small local model ignores (presence_penalty, user, ...) are accepted.
    min_tokens: the least max_tokens (0 for /v1/completions, which may only score a prompt)."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", None, "invalid_type")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list", "messages", "invalid_type")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ApiError(400, f"messages[{i}] must be an object", f"messages[{i}]",
                           "invalid_type")
        if m.get("role") not in ROLE_NAMES:
            raise ApiError(400, f"messages[{i}].role must be one of {', '.join(ROLE_NAMES)}; "
                                f"got {m.get('role')!r}",
                           f"messages[{i}].role", "invalid_value")
        content = m.get("content")
        # the newer form: a list of parts, of which we read the text ones
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text"
                       and isinstance(p.get("text"), str) for p in content):
                raise ApiError(400, f"messages[{i}].content: only text parts are supported",
                               f"messages[{i}].content", "invalid_value")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string",
                           f"messages[{i}].content", "invalid_type")
        clean.append({"role": ROLE_NAMES[m["role"]], "content": content})
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stop, list) or len(stop) > 16 or not all(isinstance(s, str) for s in stop):
        raise ApiError(400, "'stop' must be a string or a list of at most 16 strings", "stop",
                       "invalid_type")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false", "stream", "invalid_type")
    number(body, "n", 1, 1, 1, integer=True)  # one answer per request
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    options = body.get("stream_options") or {}
    temperature = number(body, "temperature", cfg.temperature, 0, 2)
    top_p = number(body, "top_p", cfg.top_p, 0, 1)
    return dict(
        messages=clean, stop=stop, stream=stream,
        include_usage=isinstance(options, dict) and options.get("include_usage") is True,
        max_tokens=number({"max_tokens": max_tokens}, "max_tokens", cfg.max_new_tokens,
                          min_tokens, 10**6, integer=True),
        seed=number(body, "seed", None, -2**63, 2**64 - 1, integer=True),
        # top_p 0 would keep no token at all; OpenAI treats it as "only the most likely one"
        sampling=dict(temperature=0 if top_p == 0 else temperature, top_p=top_p or 1.0,
                      # not OpenAI's,
                      top_k=number(body, "top_k", cfg.top_k, 0, 10**6, integer=True),
                      repetition_penalty=number(body, "repetition_penalty", cfg.repetition_penalty,
                                                0.01, 10)))


# ---------------------------------------------------------------------------------------------
# The batch: requests that arrive while others are being answered join them
# ---------------------------------------------------------------------------------------------
class Job:
    """One request for the batcher: its prompt and sampling settings, and a queue of token ids
    that its HTTP thread reads (None ends it; an exception is raised there)."""

    def __init__(self, ids, max_tokens, generator, sampling):
        self.ids, self.max_tokens, self.generator, self.sampling = (
            ids, max_tokens, generator, sampling)
        self.out = queue.Queue()
        self.cancelled = False  # the reader stopped early: a stop string, a client that left
        self.finished = False  # a stop token or max_tokens reached
        self.n_tokens, self.submitted, self.first_token_at = 0, time.monotonic(), None

    def tokens(self):
        """The ids as the batcher makes them; closing this generator (Answer does) cancels the
        job."""
        try:
            while (item := self.out.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.cancelled = True


class Batcher:
    """One thread owns the model and advances every admitted request by one token per step.

    Continuous batching: a request that arrives while others are answered waits at most one step,
    then joins them (its prompt is prefilled into a free row of the KV cache, which pauses the
    others for that long); one that finishes, or whose reader left, frees its row at once. At most
    max_batch rows; at most max_queue requests wait for one, and another is refused (503).

    MiniMind decodes all its rows in one step (decode.Decoder): the weights, which decoding one
    token at a time spends its time reading, are read once for every row, so eight clients get
    several times one client's tokens/s. Each row samples with its own settings and generator, as
    MiniMind.generate does. gpt.GPT has no KV cache: its rows are its own generate() streams,
    advanced in turn (fair to every client, but no faster than one at a time)."""

    def __init__(self, engine, max_batch, max_queue, metrics):
        self.engine, self.metrics = engine, metrics
        self.max_batch, self.max_queue = max_batch, max_queue
        batched = isinstance(engine.model, minimind.MiniMind)  # GPT has no KV cache
        self.decoder = decode.Decoder(engine.model, max_batch) if batched else None
        # Row i's tokens so far (prompt and answer), for the repetition penalty: rows move as the
        # decoder's do, so the penalty is one set of tensor ops for the whole batch.
        self.seen = torch.zeros(max_batch, engine.tok.vocab_size, dtype=torch.bool,
                                device=engine.device)
        self.waiting, self.active = collections.deque(), []  # active[i] is the decoder's row i
        self.cond, self.closed = threading.Condition(), False
        self.thread = threading.Thread(target=self.run, name="batcher", daemon=True)
        self.thread.start()

    def submit(self, ids, max_tokens, generator, sampling):
        """Queue a request; the 503 ApiError when it would have to wait and the queue is full."""
        job = Job(ids, max_tokens, generator, sampling)
        with self.cond:
            if self.closed or (len(self.waiting) >= self.max_queue
                               and len(self.active) + len(self.waiting) >= self.max_batch):
                raise ApiError(503, f"the server is busy ({len(self.active)} requests answering, "
                                    f"{len(self.waiting)} waiting); try again shortly", None,
                               "overloaded", "server_error", headers=[("Retry-After", "1")])
            self.waiting.append(job)
            self.cond.notify()
        return job

    def close(self):
        with self.cond:
            self.closed = True
            self.cond.notify()

    def run(self):
        while True:
            with self.cond:
                while not (self.waiting or self.active or self.closed):
                    self.cond.wait()
                if self.closed:
                    break
                free = self.max_batch - len(self.active)
                joining = [self.waiting.popleft() for _ in range(min(free, len(self.waiting)))]
            for job in joining:
                self.guarded(self.admit, [job], job)
            self.guarded(self.step, list(self.active))
        # closing: nobody is left waiting forever
        for job in list(self.active) + list(self.waiting):
            job.out.put(None)

    def guarded(self, work, jobs, *args):
        """Run work(*args); a bug there fails only `jobs` (their clients get a 500) and frees their
        rows, so the server goes on serving the others."""
        try:
            work(*args)
        except Exception as e:
            traceback.print_exc()
            for job in jobs:
                job.out.put(e)
                job.cancelled = True
            self.sweep()

    def admit(self, job):
        """Give the job a row: prefill its prompt, sample its first token."""
        job.history, job.start = list(job.ids), 0  # the prompt is shorter than the context
        row = len(self.active)
        if self.decoder is None:
            job.stream = self.engine.tokens(job.ids, job.max_tokens, job.generator, **job.sampling)
            self.active.append(job)
            return self.deliver(job, next(job.stream, None))
        logits = self.decoder.add(job.ids)  # [V]; a prefill that fails leaves no row behind
        self.active.append(job)  # row `row`, as in the decoder
        self.seen[row] = False
        self.seen[row, job.ids] = True
        self.sample([job], logits[None], row)

    def step(self):
        """One new token for every row, then the finished and abandoned rows leave."""
        self.sweep()
        if not self.active:
            return
        self.metrics.observe("batch_size", len(self.active))
        if self.decoder is None:
            for job in self.active:
                self.deliver(job, next(job.stream, None))
        else:
            window = self.engine.context
            for row, job in enumerate(self.active):  # a full window: crop it, as generate() does
                start = minimind.crop_start(len(job.history), job.start, window)
                if start != job.start:
                    job.start = start
                    self.decoder.refill(row, job.history[job.start:-1])
            logits = self.decoder.step([job.history[-1] for job in self.active])  # [rows, V]
            self.sample(self.active, logits, 0)
        self.sweep()

    def sample(self, jobs, logits, first):
        """The next token of rows first, first+1, ... (jobs, logits [rows, V]), as generate() picks
        it: the repetition penalty for all rows at once, one argmax for the greedy ones, then
        sample_next row by row for the others, each with its own settings and generator."""
        rows = slice(first, first + len(jobs))
        penalty = torch.tensor([[j.sampling["repetition_penalty"]] for j in jobs],
                               device=logits.device)
        logits = minimind.penalise_repeats(logits.float(), self.seen[rows], penalty)  # [rows, V]
        tokens = logits.argmax(-1).tolist()
        for i, job in enumerate(jobs):
            s = job.sampling
            if s["temperature"] != 0:
                tokens[i] = minimind.sample_next(logits[i], s["temperature"], s["top_k"] or None,
                                                 s["top_p"], job.generator)
            self.deliver(job, tokens[i])
        self.seen[rows][torch.arange(len(jobs)), tokens] = True

    def deliver(self, job, token):
        """Hand a token to the job's reader; None (a stream that ended) finishes the job."""
        if token is not None:
            job.n_tokens += 1
            if job.first_token_at is None:
                job.first_token_at = time.monotonic()
                self.metrics.observe("ttft", job.first_token_at - job.submitted)
            job.out.put(token)
            job.history.append(token)
        if token is None or token in self.engine.stop_ids or job.n_tokens >= job.max_tokens:
            job.finished = True
            job.out.put(None)

    def sweep(self):
        """Free the rows of finished and cancelled jobs (the last row moves into each gap)."""
        for row in reversed(range(len(self.active))):
            job = self.active[row]
            if not (job.finished or job.cancelled):
                continue
            if job.n_tokens > 1:
                self.metrics.observe("tokens_per_s", (job.n_tokens - 1) / max(
                    time.monotonic() - job.first_token_at, 1e-9))
            if self.decoder is not None:
                self.decoder.remove(row)
                self.seen[row] = self.seen[len(self.active) - 1]
            else:
                job.stream.close()
            self.active[row] = self.active[-1]
            self.active.pop()


# ---------------------------------------------------------------------------------------------
# The HTTP server: its routes, and the objects its request threads share
# ---------------------------------------------------------------------------------------------
# metrics label others "other"
ROUTES = ("/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions")


class Handler(BaseHTTPRequestHandler):
    """One HTTP request (HTTP/1.0: one per connection), in a thread of its own. Answers are JSON or
    server-sent events; refusals are OpenAI's error object. self.server.app holds what is shared."""
    server_version = "slm-chat/2"
    timeout = 60  # seconds a socket may stall (a client that stops reading must not hold a thread)

    def log_message(self, format, *args):
        pass  # the JSON-lines request log (RequestLog) replaces http.server's lines

    def respond(self, status, content_type, data=None, headers=()):
        """Send the status line and headers, then data if the body is given whole (a stream
        writes its own). The one place a response's status is sent and recorded: the request log
        and the metrics read it from self.entry, and a status already sent rules out a 500."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if data is not None:
            self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.entry["status"] = status
        if data is not None:
            self.wfile.write(data)

    def send_json(self, status, obj, headers=()):
        self.respond(status, "application/json", json.dumps(obj).encode("utf-8"), headers)

    def begin(self):
        """Check the key (GET /health stays open, for load balancers' probes); returns the path."""
        self.t0, self.body_read = time.monotonic(), False
        path = self.path.split("?")[0].rstrip("/") or "/"
        self.entry = {"client": self.client_address[0], "method": self.command, "path": path,
                      "status": None}
        key = self.server.app.cfg.api_key
        if key and path != "/health" and not guard.authorized(self.headers, key):
            message = ("incorrect API key" if "Authorization" in self.headers
                       else "no API key: send the header 'Authorization: Bearer KEY'")
            raise ApiError(401, message, None, "invalid_api_key",
                           headers=[("WWW-Authenticate", "Bearer")])
        return path

    def finish_request(self, error=None):
        """Count the request in the metrics and write its line in the request log."""
        e, app = self.entry, self.server.app
        e["latency_s"] = round(time.monotonic() - self.t0, 4)
        if error:
            e["error"] = error
        route = e["path"] if e["path"] in ROUTES else "other"
        app.metrics.request(route, e["status"] or 499, e.get("prompt_tokens", 0),
                            e.get("completion_tokens", 0))
        app.log.write(e)

    def refuse(self, e):
        if not self.body_read:  # unread data: the client would see a reset instead of the answer
            self.read_raw(quietly=True)
        self.send_json(e.status, e.body, e.headers)

    def do_GET(self):
        try:
            path = self.begin()
            app = self.server.app
            if path == "/health":
                self.send_json(200, {"status": "ok", "model": app.engine.name})
            elif path == "/v1/models":
                model = {"id": app.engine.name, "object": "model", "created": app.started,
                         "owned_by": "slm"}
                self.send_json(200, {"object": "list", "data": [model]})
            elif path == "/metrics":
                self.respond(200, "text/plain; version=0.0.4; charset=utf-8",
                             app.metrics.render(app.batcher).encode("utf-8"))
            else:
                raise ApiError(404, f"no route GET {path}", None, "not_found")
        except ApiError as e:
            self.refuse(e)
        except OSError:
            self.close_connection = True
        self.finish_request()

    def read_raw(self, quietly=False):
        """The request body's bytes (Content-Length of them, at most --max-body). quietly: read and
        drop what was sent (up to a sane amount), for a request refused before its body was read."""
        self.body_read, limit = True, self.server.app.cfg.max_body
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            if quietly:
                return b""
            if length is None:
                raise ApiError(411, "a Content-Length header is required", None, "length_required")
            raise ApiError(400, "bad Content-Length header", None, "invalid_value")
        length = int(length)
        if length > limit or quietly:
            left = length if length <= 64 * limit else 0
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 16))
                if not chunk:
                    break
                left -= len(chunk)
            self.close_connection = True
            if quietly:
                return b""
            raise ApiError(413, f"request body of {length} bytes is over the limit of {limit}",
                           None, "request_too_large")
        return self.rfile.read(length)

    def do_POST(self):
        error = None
        try:
            path = self.begin()
            if path not in ROUTES[3:]:
                raise ApiError(404, f"no route POST {path}", None, "not_found")
            try:
                body = json.loads(self.read_raw().decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ApiError(400, f"the request body is not valid JSON: {e}", None,
                               "invalid_json")
            if path == "/v1/completions":
                self.text_complete(body)
            else:
                self.complete(parse_request(body, self.server.app.cfg))
        except ApiError as e:
            self.refuse(e)
        except OSError:  # the client went away (BrokenPipe, ConnectionReset, a timeout)
            self.close_connection, error = True, "client disconnected"
        except Exception as e:  # a bug: say so, log it, keep serving
            traceback.print_exc()
            error = f"internal error: {e}"
            if self.entry["status"] is None:  # nothing sent yet: a 500 can still be the answer
                try:
                    self.send_json(500, ApiError(500, error, None, None, "server_error").body)
                except OSError:
                    pass
        self.finish_request(error)

    def complete(self, req):
        """Answer a checked request: its prompt joins the batch; the answer goes back whole, or as
        events while it is written."""
        engine = self.server.app.engine
        ids = engine.prompt_ids(req["messages"])
        self.entry.update(prompt_tokens=len(ids), stream=req["stream"], messages=req["messages"])
        if len(ids) >= engine.context:
            raise ApiError(400, f"the prompt is {len(ids)} tokens; this model's context is "
                                f"{engine.context}", "messages", "context_length_exceeded")
        job, answer = self.answer(ids, req["messages"], req)
        try:
            if req["stream"]:
                self.stream(answer, req["include_usage"])
            else:
                text = "".join(answer.stream())
                self.send_json(200, dict(self.head("chat.completion"), choices=[{
                    "index": 0, "message": {"role": "assistant", "content": text},
                    "finish_reason": answer.finish_reason, "logprobs": None}], usage=usage(answer)))
        finally:
            self.settle(job, answer)
            self.entry["answer"] = answer.text

    def answer(self, ids, prompt, req):
        """One prompt's answer, as both routes get it: the prompt (chat messages, or a completion's
        text) checked by the guard first, then generated in the batch (unless blocked, or
        max_tokens is 0), the answer checked on its way out. -> (its job, or None; the answer)"""
        app, engine, job = self.server.app, self.server.app.engine, None
        if app.guard.blocks_input(prompt, self.entry):  # not generated at all
            return None, app.guard.watch(guard.Refused(app.guard.refusal, ids), self.entry)
        if req["max_tokens"]:
            job = app.batcher.submit(ids, req["max_tokens"], make_generator(engine, req["seed"]),
                                     req["sampling"])
        tokens = job.tokens() if job else (t for t in ())  # max_tokens 0: nothing to generate
        answer = Answer(engine, ids, req["max_tokens"], stop=req["stop"], tokens=tokens)
        return job, app.guard.watch(answer, self.entry)

    def settle(self, job, answer):
        """However an answer ended: the batch need not go on with it; its figures in the log."""
        if job:
            job.cancelled = True
        e, t = self.entry, job and job.first_token_at
        ttft = t and round(t - job.submitted, 4)
        e.update(completion_tokens=e.get("completion_tokens", 0) + answer.n_tokens,
                 finish_reason=answer.finish_reason, ttft_s=e.get("ttft_s") or ttft)

    def text_complete(self, body):
        """POST /v1/completions (completions.py): each prompt (one choice each, in turn) is
        answered as a chat request is, through self.answer and the guard (max_tokens 0: nothing
        generated); with logprobs, one pass scores it. Streamed: each choice's text as events."""
        app, engine = self.server.app, self.server.app.engine
        try:  # the checks chat completions share (stop, temperature, seed ...) read the same fields
            req = parse_request({"messages": [{"role": "user", "content": ""}], **body}
                                if isinstance(body, dict) else body, app.cfg, min_tokens=0)
            prompts, (echo, top) = completions.prompts_of(body, engine.tok), completions.check(body)
        except completions.BadRequest as e:
            raise ApiError(400, str(e), e.param, "invalid_value")
        if req["max_tokens"] and max(map(len, prompts)) >= engine.context:
            raise ApiError(400, f"the prompt is {max(map(len, prompts))} tokens; this model's "
                                f"context is {engine.context}", "prompt", "context_length_exceeded")
        texts = [engine.tok.decode(ids) for ids in prompts]  # what the guard reads, and the log
        self.entry.update(prompt_tokens=sum(map(len, prompts)), stream=req["stream"],
                          prompt=texts, answer=[])
        head, choices = self.head("text_completion"), []
        if req["stream"]:
            self.respond(200, "text/event-stream", headers=[("Cache-Control", "no-cache")])
        for i, ids in enumerate(prompts):
            job, answer = self.answer(ids, texts[i], req)
            try:
                if req["stream"]:
                    if echo:
                        self.event(completions.chunk(head, i, texts[i]))
                    self.send_pieces(answer, lambda piece: completions.chunk(head, i, piece))
                    self.event(completions.chunk(head, i, "", answer.finish_reason))
                else:
                    text = "".join(answer.stream())
            finally:
                self.settle(job, answer)
                self.entry["answer"].append(answer.text)
            if not req["stream"]:
                new = completions.answer_ids(engine, job.history[len(ids):], text) if job else []
                choices.append(completions.choice(engine, i, ids, new, text,
                                                  answer.finish_reason, echo, top, app.scoring))
        n, m = self.entry["prompt_tokens"], self.entry["completion_tokens"]
        counts = {"prompt_tokens": n, "completion_tokens": m, "total_tokens": n + m}
        if req["stream"]:
            self.end_stream(head, req["include_usage"] and counts)
        else:
            self.send_json(200, dict(head, choices=choices, usage=counts))

    def head(self, kind):
        prefix = "chatcmpl-" if kind.startswith("chat") else "cmpl-"   # as OpenAI names them
        return {"id": prefix + uuid.uuid4().hex, "object": kind, "created": int(time.time()),
                "model": self.server.app.engine.name}

    def stream(self, answer, include_usage):
        """Server-sent events: one `data: {json}` line per chunk, then `data: [DONE]`. HTTP/1.0
        closes the connection after the response, so the end of the stream needs no length."""
        self.respond(200, "text/event-stream", headers=[("Cache-Control", "no-cache")])
        top = self.head("chat.completion.chunk")  # one id for every chunk of this answer

        def chunk(delta, finish_reason=None):
            return dict(top, choices=[{"index": 0, "delta": delta, "finish_reason": finish_reason,
                                       "logprobs": None}])

        self.event(chunk({"role": "assistant", "content": ""}))
        self.send_pieces(answer, lambda piece: chunk({"content": piece}))
        self.event(chunk({}, answer.finish_reason))
        self.end_stream(top, include_usage and usage(answer))

    def event(self, chunk):
        self.wfile.write(b"data: " + json.dumps(chunk).encode("utf-8") + b"\n\n")

    def send_pieces(self, answer, chunk):
        """An event chunk(piece) for each piece of the answer (both routes); the answer's stream
        is closed however this ends (a client that left: its row in the batch is freed)."""
        pieces = answer.stream()
        try:
            for piece in pieces:
                self.event(chunk(piece))
        finally:
            pieces.close()

    def end_stream(self, top, counts):
        if counts:  # stream_options.include_usage: a last chunk with no choices, the usage
            self.event(dict(top, choices=[], usage=counts))
        self.wfile.write(b"data: [DONE]\n\n")


def usage(answer):
    return {"prompt_tokens": len(answer.ids), "completion_tokens": answer.n_tokens,
            "total_tokens": len(answer.ids) + answer.n_tokens}


class App:
    """What the request threads share: the engine, the flags, the batch, the metrics, the log."""

    def __init__(self, engine, cfg, quiet=False):
        self.engine, self.cfg, self.started = engine, cfg, int(time.time())
        self.metrics = Metrics()
        self.batcher = Batcher(engine, cfg.max_batch, cfg.max_queue, self.metrics)
        self.scoring = threading.Lock()  # /v1/completions' logprobs: one forward pass at a time
        where = "" if quiet and cfg.request_log == "-" else cfg.request_log
        self.log = guard.RequestLog(where, cfg.log_content, self.metrics)
        policy = guard.Policy.load(cfg.guard, cfg.guard_hold) if cfg.guard else guard.Policy()
        self.guard = guard.Guard(policy, cfg.refusal_message, self.metrics)


class ChatServer(ThreadingHTTPServer):
    """A thread per request (they mostly wait on the batch); server_close stops the batch too."""
    daemon_threads = True  # a stuck client never keeps the process alive at shutdown

    def __init__(self, app):
        self.app = app
        super().__init__((app.cfg.host, app.cfg.port), Handler)

    def server_close(self):
        super().server_close()
        self.app.batcher.close()


def make_server(engine, cfg, quiet=False):
    """The server on cfg.host:cfg.port (port 0: any free one, see server.server_port), with its
    batcher thread running; call serve_forever() on it. quiet: no request log on stderr (tests)."""
    guard.check_exposure(cfg)
    app = App(engine, cfg, quiet)
    try:
        return ChatServer(app)
    except OSError:
        app.batcher.close()
        raise


def serve(engine, cfg):
    """Listen, say where, and answer requests until Ctrl-C."""
    try:
        server = make_server(engine, cfg)
    except OSError as e:
        raise UserError(f"cannot listen on {cfg.host}:{cfg.port}: {e.strerror or e}")
    url = f"http://{cfg.host}:{server.server_port}/v1"
    print(f"{engine.describe()}\nserving on {url}  (POST /chat/completions, POST /completions, "
          f"GET /models, GET /health, GET /metrics; up to {cfg.max_batch} requests decoded "
          f"together, {cfg.max_queue} waiting; "
          f"{'API key required' if cfg.api_key else 'no API key'}; Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("\nstopped")
    finally:
        server.server_close()


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def main(argv=None, **overrides):
    """Serve a run directory, from flags in argv (or sys.argv) and keyword overrides (for
    notebooks: main(run_dir="out/dpo", port=8001)), until Ctrl-C."""
    cfg = parse_args(argv, overrides)
    if cfg.seed >= 0:
        torch.manual_seed(cfg.seed)
    serve(Engine(cfg.run_dir, check_device(cfg.device), cfg.dtype), cfg)


if __name__ == "__main__":
    run_cli(main)
