"""chat.py: talk to any run directory in the terminal, or serve it over an OpenAI-style HTTP API
(book chapters 11 and 12).

    python chat.py out/dpo                          # chat in the terminal, answers stream
                                                    # as written
    python chat.py out/dpo --system "Be brief."     # with a system prompt
    python chat.py out/pretrain                     # a pre-trained model: plain text continuation
    python chat.py out/dpo -p "What does len do?"   # answer once and exit (scripts, tests)
    echo "What does len do?" | python chat.py out/dpo
    python chat.py out/dpo-int8 --serve --port 8000 # POST http://127.0.0.1:8000/v1/chat/completions
    python chat.py out/dpo --serve --host 0.0.0.0 --api-key SECRET --max-batch 16   # on the network

Reading order: the config -> a loaded run (any run directory: float or INT8, MiniMind or GPT;
every model streams ids from the same `generate`) -> turning token ids into text as they arrive
(UTF-8 split across tokens, stop strings) -> the terminal chat (history, dropping old turns when
the context is full, /commands, Ctrl-C) -> the HTTP server (validation, OpenAI's JSON objects,
server-sent events) -> the batch that decodes many requests at once -> what a deployment needs
(API keys, Prometheus metrics, a request log) -> the server's routes -> main.

A model fine-tuned for chat (stage "sft" or "dpo") sees the conversation in the ChatML template of
sft.render_chat and stops at <|im_end|>; a pre-trained model just continues the text it is given.
Only the standard library serves HTTP: no web framework, nothing to install.

Imports: rundir.py (opening a run directory, flags, errors) and sft.py (the chat template).
"""
import codecs
import collections
import datetime
import hmac
import ipaddress
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
from pathlib import Path

import torch

import decode
import minimind
from rundir import (UserError, check_device, is_chat, load_run, option, parse_config,
                    pick_inference_dtype, run_cli)
from sft import render_chat


# ---------------------------------------------------------------------------------------------
# Configuration: each field is a flag; RUN_DIR is the one positional argument, -p is --prompt.
# ---------------------------------------------------------------------------------------------
@dataclass
class ChatConfig:
    run_dir: str = option("out/dpo", "run directory to load (any stage, float or INT8)",
                          positional="?")
    prompt: str = option("", "answer this prompt once and exit", short="-p")
    system: str = option("", "system prompt (chat mode)")
    temperature: float = option(0.7, "sampling temperature; 0 = greedy")
    top_k: int = option(50, "sample among the k most likely tokens (0: all)")
    top_p: float = option(0.9, "nucleus sampling: smallest set with this much probability (1: off)")
    repetition_penalty: float = option(1.1, "> 1 makes tokens already seen less likely")
    max_new_tokens: int = option(256, "longest answer, in tokens")
    seed: int = option(-1, "random seed for reproducible answers (-1: different every run)")
    device: str = option("auto", "auto | cpu | cuda | mps")
    dtype: str = option("auto", "weights' precision while generating: auto (the fastest "
                                "accurate one here: fp16 on x86 CPUs, bf16 on recent GPUs) | "
                                "fp32 | fp16 | bf16")
    serve: bool = option(False, "run the OpenAI-compatible HTTP server instead of chatting")
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


def parse_args(argv=None, overrides=None):
    """rundir.parse_config's flags (RUN_DIR positional, -p for --prompt), with the values
    checked."""
    cfg = parse_config(ChatConfig, argv, None, overrides)
    if (cfg.temperature < 0 or not 0 < cfg.top_p <= 1 or cfg.top_k < 0
            or cfg.repetition_penalty <= 0):
        raise UserError("need --temperature >= 0, 0 < --top-p <= 1, --top-k >= 0, "
                        "--repetition-penalty > 0")
    if cfg.max_new_tokens < 1 or cfg.max_body < 1 or cfg.max_batch < 1 or cfg.max_queue < 0:
        raise UserError("--max-new-tokens, --max-body and --max-batch must be at least 1, "
                        "--max-queue at least 0")
    cfg.api_key = cfg.api_key or os.environ.get("SLM_API_KEY", "")
    return cfg


# ---------------------------------------------------------------------------------------------
# The model: load any run directory and produce token ids one at a time.
# ---------------------------------------------------------------------------------------------
class Engine:
    """A loaded run directory: the model, its tokenizer, the mode (chat or text) and its limits."""

    def __init__(self, run_dir, device="cpu", dtype="auto"):
        if not Path(run_dir).is_dir():
            raise UserError(f"{run_dir}: no such run directory")
        self.model, self.tok, self.payload = load_run(run_dir, device=device)
        self.dtype = self.set_dtype(device, dtype)
        self.device, self.arch = device, self.payload.get("arch", "minimind")
        self.stage = self.payload.get("stage", "pretrain")
        self.chat = is_chat(self.payload)  # fine-tuned on ChatML conversations
        self.context = self.model.context_length
        special = self.tok.special_tokens
        self.eot = special["<|endoftext|>"]
        # A chat answer ends at <|im_end|>; a model that opens a new turn has finished too.
        names = ["<|endoftext|>"] + (["<|im_end|>", "<|im_start|>"] if self.chat else [])
        self.stop_ids = {special[n] for n in names if n in special}
        self.name = Path(run_dir).resolve().name
        # An INT8 run keeps its quantized weights as int8 buffers, not parameters: count both.
        self.n_params = (sum(p.numel() for p in self.model.parameters())
                         + sum(b.numel() for b in self.model.buffers() if b.dtype == torch.int8))
        self.weights = "INT8 weights" if self.payload.get("quantized") else "float weights"

    def set_dtype(self, device, name):
        """Arrange the weights for generating in the chosen precision; returns its name. MiniMind
        keeps its weights and prepares a decoding copy (decode.prepare_decoding: an INT8 run's
        int8 layers stay int8, its float parts take the dtype). GPT has no decoding path: only an
        explicit --dtype casts it."""
        dtype = pick_inference_dtype(device, name)
        if isinstance(self.model, minimind.MiniMind):
            decode.prepare_decoding(self.model, dtype)
        elif name != "auto":
            self.model.to(dtype)
        else:
            dtype = next(self.model.parameters()).dtype
        label = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
        auto = " (auto: the fastest accurate precision here; --dtype to choose)"
        return label + (auto if name == "auto" else "")

    def describe(self):
        mode = ("chat mode (ChatML template, multi-turn)" if self.chat
                else "text mode: a pre-trained model continues your text "
                     "(no chat template, no history)")
        return (f"{self.name}: {self.arch}, stage {self.stage}, "
                f"{self.n_params / 1e6:.1f}M parameters "
                f"({self.weights}, generating in {self.dtype}), "
                f"context {self.context} tokens, on {self.device}. {mode}")

    def prompt_ids(self, messages):
        """Chat mode: the conversation in ChatML, ending with the assistant's header. Text mode: the
        messages' text after <|endoftext|>, the token that starts every document in pre-training."""
        if self.chat:
            return render_chat(self.tok, messages, add_generation_prompt=True)[0]
        return [self.eot] + self.tok.encode("\n".join(m["content"] for m in messages),
                                            allowed_special="none")

    def tokens(self, ids, max_new_tokens, generator, temperature, top_k, top_p, repetition_penalty):
        """A generator of new token ids from the model's generate (MiniMind's: decode.py's)."""
        sampling = dict(max_new_tokens=max_new_tokens, temperature=temperature,
                        top_k=top_k or None, top_p=top_p, repetition_penalty=repetition_penalty,
                        stop_tokens=self.stop_ids, generator=generator)
        if isinstance(self.model, minimind.MiniMind):
            return decode.generate(self.model, ids, **sampling)
        return self.model.generate(ids, **sampling)


def make_generator(engine, seed):
    """A seeded torch.Generator (the same answers every run), or None (torch's global RNG)."""
    if seed is None:
        return None
    return torch.Generator(device=engine.device).manual_seed(seed % 2**63)


# ---------------------------------------------------------------------------------------------
# From token ids to text as it is written
# ---------------------------------------------------------------------------------------------
def stop_cut(text, stops):
    """Where to cut text that is still growing, given stop strings.

    Returns (end, hit). hit=True: a stop string starts at `end`, the answer is text[:end].
    hit=False: text[:end] is safe to show; the rest could be the first characters of a stop
    string, so it waits for the next token.  stop_cut("Hi. User", ["User:"]) == (4, False)."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    if found:
        return min(found), True
    hold = max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
    return len(text) - hold, False


class Answer:
    """One answer being generated. Iterate over .stream() to get its text piece by piece; then
    .text is the whole answer, .finish_reason "stop" or "length", .n_tokens the tokens generated.

    A token is a few bytes, and one character can be split across two tokens (an "é" is two
    bytes, an emoji four). An incremental UTF-8 decoder keeps an unfinished character until its
    last byte arrives, so the terminal never shows half a character as "�"."""

    def __init__(self, engine, ids, max_new_tokens, generator=None, stop=(), tokens=None,
                 **sampling):
        self.engine, self.ids, self.max_new_tokens = engine, ids, max_new_tokens
        self.generator, self.stop, self.sampling = generator, [s for s in stop if s], sampling
        self.tokens = tokens  # token ids from elsewhere (the server's batch); None: engine.tokens
        self.text, self.finish_reason, self.n_tokens = "", None, 0

    def stream(self):
        tok = self.engine.tok
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        tokens = self.tokens or self.engine.tokens(self.ids, self.max_new_tokens, self.generator,
                                                   **self.sampling)
        shown = 0  # characters of self.text already yielded
        try:
            for t in tokens:
                self.n_tokens += 1
                if t in self.engine.stop_ids:
                    self.finish_reason = "stop"
                    break
                if not tok.is_special(t):  # a stray special token is not text to show
                    self.text += decoder.decode(tok.id_to_bytes(t))
                end, hit = stop_cut(self.text, self.stop)
                if hit:
                    self.text, self.finish_reason = self.text[:end], "stop"
                if end > shown:
                    yield self.text[shown:end]
                    shown = end
                if hit:
                    return
            else:
                self.finish_reason = "length"
            self.text += decoder.decode(b"", final=True)  # a cut-off character becomes "�"
            end, hit = stop_cut(self.text, self.stop)
            self.text = self.text[:end] if hit else self.text  # what was held back is shown now
            if len(self.text) > shown:
                yield self.text[shown:]
        finally:
            tokens.close()  # also when the reader stops early (Ctrl-C, a client that left)


# ---------------------------------------------------------------------------------------------
# The terminal chat
# ---------------------------------------------------------------------------------------------
HELP = """commands:
  /reset         forget the conversation (the system prompt stays)
  /system TEXT   set the system prompt (/system alone removes it)
  /help          this list
  /exit          leave (Ctrl-D does too); Ctrl-C stops an answer without leaving"""


def fit_history(tok, system, turns, budget):
    """Drop the oldest turns until system + turns, rendered, fit in `budget` tokens.

    turns alternate user, assistant, ..., user (the newest message last). The system prompt is
    never dropped, nor the newest message. Returns (kept turns, number of messages dropped), or
    (None, n) when even the newest message alone does not fit."""
    head = [{"role": "system", "content": system}] if system else []
    dropped = 0
    while len(render_chat(tok, head + turns, add_generation_prompt=True)[0]) > budget:
        if len(turns) <= 1:
            return None, dropped
        # a whole exchange
        cut = 2 if turns[0]["role"] == "user" and turns[1]["role"] == "assistant" else 1
        turns, dropped = turns[cut:], dropped + cut
    return turns, dropped


class ChatSession:
    """The conversation the terminal keeps: a system prompt, and turns that drop off the front
    when the context is full."""

    def __init__(self, engine, cfg, out=None):
        self.engine, self.cfg, self.out = engine, cfg, out or sys.stdout
        self.system, self.turns = cfg.system, []
        # One RNG for the whole session, so a seeded session repeats answer for answer.
        self.generator = make_generator(engine, cfg.seed if cfg.seed >= 0 else None)
        # Room kept free for the answer; the prompt gets the rest of the context.
        self.budget = engine.context - min(cfg.max_new_tokens, engine.context // 2)

    def write(self, s):
        self.out.write(s)
        self.out.flush()

    def reply(self, text, label=""):
        """Answer `text`, printing `label` then the answer as it is written; returns the answer."""
        if self.engine.chat:
            turns, dropped = fit_history(self.engine.tok, self.system,
                                         self.turns + [{"role": "user", "content": text}],
                                         self.budget)
            if turns is None and self.cfg.prompt:  # one-shot mode: a user error, exit status 2
                raise UserError("the prompt does not fit in this model's context of "
                                f"{self.engine.context} tokens (with "
                                f"{self.engine.context - self.budget} kept for the answer)")
            if turns is None:
                self.write("[that message is too long for this model's context of "
                           f"{self.engine.context} tokens (with "
                           f"{self.engine.context - self.budget} kept for the answer); not sent]\n")
                return None
            if dropped:
                self.write(f"[context full: dropped the {dropped} oldest message(s); "
                           "the system prompt is kept]\n")
            head = [{"role": "system", "content": self.system}] if self.system else []
            ids = self.engine.prompt_ids(head + turns)
        else:  # text mode: each prompt is continued on its own
            turns = None
            ids = self.engine.prompt_ids([{"role": "user", "content": text}])
            # in the terminal, show the continuation after the text it continues
            if not self.cfg.prompt:
                label += text
        self.write(label)
        cfg = self.cfg
        answer = Answer(self.engine, ids, cfg.max_new_tokens, self.generator,
                        temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                        repetition_penalty=cfg.repetition_penalty)
        pieces = answer.stream()
        try:
            for piece in pieces:
                self.write(piece)
        except KeyboardInterrupt:  # Ctrl-C: stop this answer, keep the conversation
            pieces.close()
            self.write(" [stopped]")
        self.write("\n")
        if turns is not None:
            self.turns = turns + [{"role": "assistant", "content": answer.text}]
        return answer.text

    def command(self, line):
        """Run a /command; returns False when the user wants to leave."""
        name, _, arg = line.partition(" ")
        if name in ("/exit", "/quit"):
            return False
        if name == "/reset":
            self.turns = []
            self.write("[conversation cleared]\n")
        elif name == "/system":
            self.system = arg.strip()
            self.write(f"[system prompt: {self.system!r}]\n" if self.system
                       else "[system prompt removed]\n")
            if not self.engine.chat:
                self.write("[note: a pre-trained model in text mode does not use a "
                           "system prompt]\n")
        elif name == "/help":
            self.write(HELP + "\n")
        else:
            self.write(f"[unknown command {name}; /help lists them]\n")
        return True


def repl(session, read=input):
    """The interactive loop: read a line, answer it, until /exit or Ctrl-D."""
    session.write(session.engine.describe() + "\n/help for commands, Ctrl-D to leave.\n")
    if session.system and session.engine.chat:
        session.write(f"[system prompt: {session.system!r}]\n")
    while True:
        try:
            line = read("you> " if session.engine.chat else "text> ")
        except EOFError:  # Ctrl-D
            session.write("\n")
            return
        except KeyboardInterrupt:  # Ctrl-C at the prompt: a fresh line, as a shell does
            session.write("\n")
            continue
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            if not session.command(line):
                return
            continue
        try:
            session.reply(line, "model> " if session.engine.chat else "")
        except KeyboardInterrupt:  # Ctrl-C before the first token: nothing was said, go on
            session.write(" [stopped]\n")


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


def parse_request(body, cfg):
    """Check a chat completion request; returns the messages and the sampling settings. Fields
    OpenAI defines that a small local model ignores (presence_penalty, user, ...) are accepted."""
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
        max_tokens=number({"max_tokens": max_tokens}, "max_tokens", cfg.max_new_tokens, 1, 10**6,
                          integer=True),
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
# What a deployment needs: API keys, metrics, a request log
# ---------------------------------------------------------------------------------------------
def is_loopback(host):
    """Does listening on `host` keep the server to this machine? ("" and 0.0.0.0 mean
    everywhere.)"""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(cfg):
    """Anyone who can reach an open server can use it (and its CPU): beyond 127.0.0.1 a key is
    required, unless --insecure says that this is meant (a trusted network, a proxy in front)."""
    if not (cfg.api_key or cfg.insecure or is_loopback(cfg.host)):
        raise UserError(f"--host {cfg.host} lets other machines reach the server: set an API key "
                        f"(--api-key KEY or SLM_API_KEY), or add --insecure if that is what "
                        "you want")


def authorized(headers, key):
    """Is 'Authorization: Bearer KEY' there? Compared in constant time (hmac.compare_digest), so the
    time a wrong key takes to refuse does not tell an attacker how many characters were right."""
    sent = headers.get("Authorization", "")
    return hmac.compare_digest(sent.encode("utf-8", "replace"), f"Bearer {key}".encode("utf-8"))


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

    def observe(self, name, value):
        with self.lock:
            self.hist[name].observe(value)

    def request(self, path, status, prompt_tokens=0, completion_tokens=0):
        with self.lock:
            self.requests[path, status] += 1
            self.tokens["prompt"] += prompt_tokens
            self.tokens["completion"] += completion_tokens

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


class RequestLog:
    """One JSON object per line and request: time, client, path, status, tokens, latency and time
    to first token. The conversation itself only with --log-content: it may be private."""

    def __init__(self, where, content=False):
        self.where, self.content, self.lock = where, content, threading.Lock()

    def write(self, entry):
        if not self.where:
            return
        if not self.content:
            entry = {k: v for k, v in entry.items() if k not in ("messages", "answer")}
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
        line = json.dumps({"time": now, **entry}) + "\n"
        with self.lock:
            if self.where == "-":
                sys.stderr.write(line)
                sys.stderr.flush()
            else:
                with open(self.where, "a", encoding="utf-8") as f:
                    f.write(line)


# ---------------------------------------------------------------------------------------------
# The HTTP server: its routes, and the objects its request threads share
# ---------------------------------------------------------------------------------------------
# metrics label others "other"
ROUTES = ("/health", "/metrics", "/v1/models", "/v1/chat/completions")


class Handler(BaseHTTPRequestHandler):
    """One HTTP request (HTTP/1.0: one per connection), in a thread of its own. Answers are JSON or
    server-sent events; refusals are OpenAI's error object. self.server.app holds what is shared."""
    server_version = "slm-chat/2"
    timeout = 60  # seconds a socket may stall (a client that stops reading must not hold a thread)

    def log_message(self, format, *args):
        pass  # the JSON-lines request log (RequestLog) replaces http.server's lines

    def send_json(self, status, obj, headers=()):
        data = json.dumps(obj).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.entry["status"] = status
        self.wfile.write(data)

    def begin(self):
        """Check the key (GET /health stays open, for load balancers' probes); returns the path."""
        self.t0, self.body_read = time.monotonic(), False
        path = self.path.split("?")[0].rstrip("/") or "/"
        self.entry = {"client": self.client_address[0], "method": self.command, "path": path,
                      "status": None}
        key = self.server.app.cfg.api_key
        if key and path != "/health" and not authorized(self.headers, key):
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
                data = app.metrics.render(app.batcher).encode("utf-8")
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.entry["status"] = 200
                self.wfile.write(data)
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
            if path != "/v1/chat/completions":
                raise ApiError(404, f"no route POST {path}", None, "not_found")
            try:
                body = json.loads(self.read_raw().decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ApiError(400, f"the request body is not valid JSON: {e}", None,
                               "invalid_json")
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
        app = self.server.app
        engine = app.engine
        ids = engine.prompt_ids(req["messages"])
        self.entry.update(prompt_tokens=len(ids), stream=req["stream"], messages=req["messages"])
        if len(ids) >= engine.context:
            raise ApiError(400, f"the prompt is {len(ids)} tokens; this model's context is "
                                f"{engine.context}", "messages", "context_length_exceeded")
        generator = make_generator(engine, req["seed"])
        job = app.batcher.submit(ids, req["max_tokens"], generator, req["sampling"])
        answer = Answer(engine, ids, req["max_tokens"], stop=req["stop"], tokens=job.tokens())
        try:
            if req["stream"]:
                self.stream(answer, req["include_usage"])
            else:
                text = "".join(answer.stream())
                self.send_json(200, dict(self.head("chat.completion"), choices=[{
                    "index": 0, "message": {"role": "assistant", "content": text},
                    "finish_reason": answer.finish_reason, "logprobs": None}], usage=usage(answer)))
        finally:
            job.cancelled = True  # however this ended, the batch need not go on with it
            ttft = job.first_token_at and round(job.first_token_at - job.submitted, 4)
            self.entry.update(completion_tokens=answer.n_tokens, finish_reason=answer.finish_reason,
                              ttft_s=ttft, answer=answer.text)

    def head(self, kind):
        return {"id": "chatcmpl-" + uuid.uuid4().hex, "object": kind, "created": int(time.time()),
                "model": self.server.app.engine.name}

    def stream(self, answer, include_usage):
        """Server-sent events: one `data: {json}` line per chunk, then `data: [DONE]`. HTTP/1.0
        closes the connection after the response, so the end of the stream needs no length."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        self.entry["status"] = 200
        top = self.head("chat.completion.chunk")  # one id for every chunk of this answer

        def event(delta, finish_reason=None):
            chunk = dict(top, choices=[{"index": 0, "delta": delta, "finish_reason": finish_reason,
                                        "logprobs": None}])
            self.wfile.write(b"data: " + json.dumps(chunk).encode("utf-8") + b"\n\n")

        event({"role": "assistant", "content": ""})
        pieces = answer.stream()
        try:
            for piece in pieces:
                event({"content": piece})
        finally:
            pieces.close()
        event({}, answer.finish_reason)
        if include_usage:
            last = dict(top, choices=[], usage=usage(answer))
            self.wfile.write(b"data: " + json.dumps(last).encode("utf-8") + b"\n\n")
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
        where = "" if quiet and cfg.request_log == "-" else cfg.request_log
        self.log = RequestLog(where, cfg.log_content)


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
    check_exposure(cfg)
    app = App(engine, cfg, quiet)
    try:
        return ChatServer(app)
    except OSError:
        app.batcher.close()
        raise


def serve(engine, cfg):
    try:
        server = make_server(engine, cfg)
    except OSError as e:
        raise UserError(f"cannot listen on {cfg.host}:{cfg.port}: {e.strerror or e}")
    url = f"http://{cfg.host}:{server.server_port}/v1"
    print(f"{engine.describe()}\nserving on {url}  (POST /chat/completions, GET /models, "
          f"GET /health, GET /metrics; up to {cfg.max_batch} requests decoded together, "
          f"{cfg.max_queue} waiting; "
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
    """Chat, answer one prompt (-p or stdin) or serve, from flags in argv (or sys.argv) and
    keyword overrides (for notebooks: main(run_dir="out/dpo", prompt="Hi")). Returns the answer
    in -p mode."""
    cfg = parse_args(argv, overrides)
    if cfg.seed >= 0:
        torch.manual_seed(cfg.seed)
    engine = Engine(cfg.run_dir, check_device(cfg.device), cfg.dtype)
    if cfg.serve:
        return serve(engine, cfg)
    interactive = "ipykernel" in sys.modules or sys.stdin.isatty()
    if not cfg.prompt and not interactive:  # `echo question | python chat.py RUN_DIR`
        cfg.prompt = sys.stdin.read().strip()
        if not cfg.prompt:
            raise UserError("no prompt: stdin was empty "
                            "(use -p TEXT, or run in a terminal to chat)")
    session = ChatSession(engine, cfg)
    if cfg.prompt:
        return session.reply(cfg.prompt)
    try:
        # arrow keys and history in input(), where the platform has it
        import readline  # noqa: F401
    except ImportError:
        pass
    return repl(session)


if __name__ == "__main__":
    run_cli(main)
