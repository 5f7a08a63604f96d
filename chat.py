"""chat.py: talk to any run directory in the terminal, or serve it over an OpenAI-style HTTP API
(book chapters 11 and 12).

    python chat.py out/dpo                          # chat in the terminal, answers stream as written
    python chat.py out/dpo --system "Be brief."     # with a system prompt
    python chat.py out/pretrain                     # a pre-trained model: plain text continuation
    python chat.py out/dpo -p "What does len do?"   # answer once and exit (scripts, tests)
    echo "What does len do?" | python chat.py out/dpo
    python chat.py out/dpo-int8 --serve --port 8000 # POST http://127.0.0.1:8000/v1/chat/completions

Reading order: the config -> a loaded run (any run directory: float or INT8, MiniMind or GPT;
every model streams ids from the same `generate`) -> turning token ids into text as they arrive (UTF-8 split across tokens, stop strings) -> the terminal chat (history,
dropping old turns when the context is full, /commands, Ctrl-C) -> the HTTP server (validation,
OpenAI's JSON objects, server-sent events, one generation at a time) -> main.

A model fine-tuned for chat (stage "sft" or "dpo") sees the conversation in the ChatML template of
sft.render_chat and stops at <|im_end|>; a pre-trained model just continues the text it is given.
Only the standard library serves HTTP: no web framework, nothing to install.

Imports: rundir.py (opening a run directory, flags, errors) and sft.py (the chat template).
"""
import codecs
import json
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch

from rundir import UserError, check_device, is_chat, load_run, option, parse_config, run_cli
from sft import render_chat


# ---------------------------------------------------------------------------------------------
# Configuration: each field is a flag; RUN_DIR is the one positional argument, -p is --prompt.
# ---------------------------------------------------------------------------------------------
@dataclass
class ChatConfig:
    run_dir: str = option("out/dpo", "run directory to load (any stage, float or INT8)", positional="?")
    prompt: str = option("", "answer this prompt once and exit", short="-p")
    system: str = option("", "system prompt (chat mode)")
    temperature: float = option(0.7, "sampling temperature; 0 = greedy")
    top_k: int = option(50, "sample among the k most likely tokens (0: all)")
    top_p: float = option(0.9, "nucleus sampling: smallest set with this much probability (1: off)")
    repetition_penalty: float = option(1.1, "> 1 makes tokens already seen less likely")
    max_new_tokens: int = option(256, "longest answer, in tokens")
    seed: int = option(-1, "random seed for reproducible answers (-1: different every run)")
    device: str = option("auto", "auto | cpu | cuda | mps")
    serve: bool = option(False, "run the OpenAI-compatible HTTP server instead of chatting")
    host: str = option("127.0.0.1", "server address (0.0.0.0 exposes it to your network)")
    port: int = option(8000, "server port (0: any free port)")
    max_body: int = option(1_000_000, "largest request body the server accepts, in bytes")


def parse_args(argv=None, overrides=None):
    """rundir.parse_config's flags (RUN_DIR positional, -p for --prompt), with the values checked."""
    cfg = parse_config(ChatConfig, argv, None, overrides)
    if cfg.temperature < 0 or not 0 < cfg.top_p <= 1 or cfg.top_k < 0 or cfg.repetition_penalty <= 0:
        raise UserError("need --temperature >= 0, 0 < --top-p <= 1, --top-k >= 0, --repetition-penalty > 0")
    if cfg.max_new_tokens < 1 or cfg.max_body < 1:
        raise UserError("--max-new-tokens and --max-body must be at least 1")
    return cfg


# ---------------------------------------------------------------------------------------------
# The model: load any run directory and produce token ids one at a time.
# ---------------------------------------------------------------------------------------------
class Engine:
    """A loaded run directory: the model, its tokenizer, the mode (chat or text) and its limits."""

    def __init__(self, run_dir, device="cpu"):
        if not Path(run_dir).is_dir():
            raise UserError(f"{run_dir}: no such run directory")
        self.model, self.tok, self.payload = load_run(run_dir, device=device)
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

    def describe(self):
        mode = ("chat mode (ChatML template, multi-turn)" if self.chat
                else "text mode: a pre-trained model continues your text (no chat template, no history)")
        return (f"{self.name}: {self.arch}, stage {self.stage}, {self.n_params / 1e6:.1f}M parameters "
                f"({self.weights}), "
                f"context {self.context} tokens, on {self.device}. {mode}")

    def prompt_ids(self, messages):
        """Chat mode: the conversation in ChatML, ending with the assistant's header. Text mode: the
        messages' text after <|endoftext|>, the token that starts every document in pre-training."""
        if self.chat:
            return render_chat(self.tok, messages, add_generation_prompt=True)[0]
        return [self.eot] + self.tok.encode("\n".join(m["content"] for m in messages), allowed_special="none")

    def tokens(self, ids, max_new_tokens, generator, temperature, top_k, top_p, repetition_penalty):
        """A generator of new token ids, from the model's streaming generate (MiniMind's prefills
        the prompt once, then runs one cached step per token)."""
        return self.model.generate(ids, max_new_tokens=max_new_tokens, temperature=temperature,
                                   top_k=top_k or None, top_p=top_p, repetition_penalty=repetition_penalty,
                                   stop_tokens=self.stop_ids, generator=generator)


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

    def __init__(self, engine, ids, max_new_tokens, generator=None, stop=(), **sampling):
        self.engine, self.ids, self.max_new_tokens = engine, ids, max_new_tokens
        self.generator, self.stop, self.sampling = generator, [s for s in stop if s], sampling
        self.text, self.finish_reason, self.n_tokens = "", None, 0

    def stream(self):
        tok = self.engine.tok
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        tokens = self.engine.tokens(self.ids, self.max_new_tokens, self.generator, **self.sampling)
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
        cut = 2 if turns[0]["role"] == "user" and turns[1]["role"] == "assistant" else 1  # a whole exchange
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
            turns, dropped = fit_history(self.engine.tok, self.system, self.turns + [{"role": "user", "content": text}],
                                         self.budget)
            if turns is None and self.cfg.prompt:  # one-shot mode: a user error, exit status 2
                raise UserError(f"the prompt does not fit in this model's context of {self.engine.context} "
                                f"tokens (with {self.engine.context - self.budget} kept for the answer)")
            if turns is None:
                self.write(f"[that message is too long for this model's context of {self.engine.context} tokens "
                           f"(with {self.engine.context - self.budget} kept for the answer); not sent]\n")
                return None
            if dropped:
                self.write(f"[context full: dropped the {dropped} oldest message(s); the system prompt is kept]\n")
            head = [{"role": "system", "content": self.system}] if self.system else []
            ids = self.engine.prompt_ids(head + turns)
        else:  # text mode: each prompt is continued on its own
            turns = None
            ids = self.engine.prompt_ids([{"role": "user", "content": text}])
            if not self.cfg.prompt:  # in the terminal, show the continuation after the text it continues
                label += text
        self.write(label)
        cfg = self.cfg
        answer = Answer(self.engine, ids, cfg.max_new_tokens, self.generator, temperature=cfg.temperature,
                        top_k=cfg.top_k, top_p=cfg.top_p, repetition_penalty=cfg.repetition_penalty)
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
            self.write(f"[system prompt: {self.system!r}]\n" if self.system else "[system prompt removed]\n")
            if not self.engine.chat:
                self.write("[note: a pre-trained model in text mode does not use a system prompt]\n")
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

    def __init__(self, status, message, param=None, code=None, kind="invalid_request_error"):
        super().__init__(message)
        self.status, self.body = status, {"error": {"message": message, "type": kind, "param": param, "code": code}}


ROLE_NAMES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def number(body, key, default, lo, hi, integer=False):
    """body[key] checked: a number (an int where integer) in [lo, hi], or the default if absent/null."""
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise ApiError(400, f"'{key}' must be {'an integer' if integer else 'a number'}", key, "invalid_type")
    if not lo <= value <= hi:
        raise ApiError(400, f"'{key}' must be between {lo} and {hi}; got {value}", key, "invalid_value")
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
            raise ApiError(400, f"messages[{i}] must be an object", f"messages[{i}]", "invalid_type")
        if m.get("role") not in ROLE_NAMES:
            raise ApiError(400, f"messages[{i}].role must be one of {', '.join(ROLE_NAMES)}; got {m.get('role')!r}",
                           f"messages[{i}].role", "invalid_value")
        content = m.get("content")
        if isinstance(content, list):  # the newer form: a list of parts, of which we read the text ones
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise ApiError(400, f"messages[{i}].content: only text parts are supported",
                               f"messages[{i}].content", "invalid_value")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string", f"messages[{i}].content", "invalid_type")
        clean.append({"role": ROLE_NAMES[m["role"]], "content": content})
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stop, list) or len(stop) > 16 or not all(isinstance(s, str) for s in stop):
        raise ApiError(400, "'stop' must be a string or a list of at most 16 strings", "stop", "invalid_type")
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
        max_tokens=number({"max_tokens": max_tokens}, "max_tokens", cfg.max_new_tokens, 1, 10**6, integer=True),
        seed=number(body, "seed", None, -2**63, 2**64 - 1, integer=True),
        # top_p 0 would keep no token at all; OpenAI treats it as "only the most likely one"
        sampling=dict(temperature=0 if top_p == 0 else temperature, top_p=top_p or 1.0,
                      top_k=number(body, "top_k", cfg.top_k, 0, 10**6, integer=True),  # not OpenAI's,
                      repetition_penalty=number(body, "repetition_penalty", cfg.repetition_penalty, 0.01, 10)))


def make_server(engine, cfg, quiet=False):
    """A ThreadingHTTPServer on cfg.host:cfg.port (port 0: any free one, see server.server_port).
    Each request gets a thread; generation itself takes a lock, so requests that arrive during an
    answer wait their turn (one model, one KV cache, one answer at a time)."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        server_version = "slm-chat/1"
        timeout = 60  # seconds a socket may stall (a client that stops reading must not hold the lock)

        def log_message(self, format, *args):
            if not quiet:
                super().log_message(format, *args)

        def send_json(self, status, obj):
            data = json.dumps(obj).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            path = self.path.split("?")[0].rstrip("/")
            if path == "/health":
                self.send_json(200, {"status": "ok", "model": engine.name})
            elif path == "/v1/models":
                self.send_json(200, {"object": "list", "data": [{"id": engine.name, "object": "model",
                                                                 "created": started, "owned_by": "slm"}]})
            else:
                self.send_json(404, ApiError(404, f"no route GET {path}", None, "not_found").body)

        def read_body(self):
            length = self.headers.get("Content-Length")
            if length is None:
                raise ApiError(411, "a Content-Length header is required", None, "length_required")
            if not length.isdigit():
                raise ApiError(400, "bad Content-Length header", None, "invalid_value")
            length = int(length)
            if length > cfg.max_body:
                # Read what was sent (up to a sane amount) so the client can hear the answer; a
                # socket closed on unread data makes the client see a reset instead of the 413.
                left = length if length <= 64 * cfg.max_body else 0
                while left > 0:
                    chunk = self.rfile.read(min(left, 1 << 16))
                    if not chunk:
                        break
                    left -= len(chunk)
                self.close_connection = True
                raise ApiError(413, f"request body of {length} bytes is over the limit of {cfg.max_body}",
                               None, "request_too_large")
            try:
                return json.loads(self.rfile.read(length).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ApiError(400, f"the request body is not valid JSON: {e}", None, "invalid_json")

        def do_POST(self):
            try:
                path = self.path.split("?")[0].rstrip("/")
                if path != "/v1/chat/completions":
                    raise ApiError(404, f"no route POST {path}", None, "not_found")
                req = parse_request(self.read_body(), cfg)
                with lock:  # released however this ends: answer done, error, client gone
                    ids = engine.prompt_ids(req["messages"])
                    if len(ids) >= engine.context:
                        raise ApiError(400, f"the prompt is {len(ids)} tokens; this model's context is "
                                            f"{engine.context}", "messages", "context_length_exceeded")
                    answer = Answer(engine, ids, req["max_tokens"], make_generator(engine, req["seed"]),
                                    req["stop"], **req["sampling"])
                    if req["stream"]:
                        self.stream(answer, req["include_usage"])
                    else:
                        text = "".join(answer.stream())
                        self.send_json(200, dict(head("chat.completion"), choices=[{
                            "index": 0, "message": {"role": "assistant", "content": text},
                            "finish_reason": answer.finish_reason, "logprobs": None}], usage=usage(answer)))
            except ApiError as e:
                self.send_json(e.status, e.body)
            except OSError:  # the client went away (BrokenPipe, ConnectionReset, a timeout)
                self.close_connection = True
            except Exception as e:  # a bug: say so, log it, keep serving
                traceback.print_exc()
                try:
                    self.send_json(500, ApiError(500, f"internal error: {e}", None, None, "server_error").body)
                except OSError:
                    pass

        def stream(self, answer, include_usage):
            """Server-sent events: one `data: {json}` line per chunk, then `data: [DONE]`. HTTP/1.0
            closes the connection after the response, so the end of the stream needs no length."""
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            top = head("chat.completion.chunk")  # one id for every chunk of this answer

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
                self.wfile.write(b"data: " + json.dumps(dict(top, choices=[], usage=usage(answer))).encode() + b"\n\n")
            self.wfile.write(b"data: [DONE]\n\n")

    def head(kind):
        return {"id": "chatcmpl-" + uuid.uuid4().hex, "object": kind, "created": int(time.time()),
                "model": engine.name}

    def usage(answer):
        return {"prompt_tokens": len(answer.ids), "completion_tokens": answer.n_tokens,
                "total_tokens": len(answer.ids) + answer.n_tokens}

    started = int(time.time())
    server = ThreadingHTTPServer((cfg.host, cfg.port), Handler)
    server.daemon_threads = True  # a stuck client never keeps the process alive at shutdown
    return server


def serve(engine, cfg):
    try:
        server = make_server(engine, cfg)
    except OSError as e:
        raise UserError(f"cannot listen on {cfg.host}:{cfg.port}: {e.strerror or e}")
    url = f"http://{cfg.host}:{server.server_port}/v1"
    print(f"{engine.describe()}\nserving on {url}  (POST /chat/completions, GET /models, GET /health; "
          f"Ctrl-C stops)", flush=True)
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
    engine = Engine(cfg.run_dir, check_device(cfg.device))
    if cfg.serve:
        return serve(engine, cfg)
    interactive = "ipykernel" in sys.modules or sys.stdin.isatty()
    if not cfg.prompt and not interactive:  # `echo question | python chat.py RUN_DIR`
        cfg.prompt = sys.stdin.read().strip()
        if not cfg.prompt:
            raise UserError("no prompt: stdin was empty (use -p TEXT, or run in a terminal to chat)")
    session = ChatSession(engine, cfg)
    if cfg.prompt:
        return session.reply(cfg.prompt)
    try:
        import readline  # noqa: F401  (arrow keys and history in input(), where the platform has it)
    except ImportError:
        pass
    return repl(session)


if __name__ == "__main__":
    run_cli(main)
