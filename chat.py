"""chat.py: talk to any run directory in the terminal (book chapter 11).

    python chat.py out/dpo                          # chat in the terminal, answers stream
                                                    # as written
    python chat.py out/dpo --system "Be brief."     # with a system prompt
    python chat.py out/pretrain                     # a pre-trained model: plain text continuation
    python chat.py out/dpo -p "What does len do?"   # answer once and exit (scripts, tests)
    echo "What does len do?" | python chat.py out/dpo
    python serve.py out/dpo --port 8000             # the same model over an OpenAI-style HTTP API

Reading order: the config -> a loaded run (any run directory: float or INT8, MiniMind or GPT;
every model streams ids from the same `generate`) -> turning token ids into text as they arrive
(UTF-8 split across tokens, stop strings) -> the terminal chat (history, dropping old turns when
the context is full, /commands, Ctrl-C) -> main.

A model fine-tuned for chat (stage "sft" or "dpo") sees the conversation in its run's chat template
(sft.render_chat: ChatML for a run trained here, an imported release's own otherwise) and stops
where the template ends a turn; a pre-trained model just continues the text it is given.

Imports: rundir.py (opening a run directory, flags, errors), sft.py (render_chat) and
chat_templates.py (the stop tokens of each template).
serve.py, the HTTP server, imports the Engine, Answer and the shared flags from here.
"""
import codecs
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

import chat_templates
import decode
import minimind
from rundir import (UserError, check_device, is_chat, load_run, option, parse_config,
                    pick_inference_dtype, run_cli)
from sft import render_chat


# ---------------------------------------------------------------------------------------------
# Configuration: each field is a flag; RUN_DIR is the one positional argument, -p is --prompt.
# ---------------------------------------------------------------------------------------------
@dataclass
class EngineConfig:
    """The flags of a loaded run and its sampling defaults, which serve.py's ServeConfig shares."""
    run_dir: str = option("out/dpo", "run directory to load (any stage, float or INT8)",
                          positional="?")
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


@dataclass
class ChatConfig(EngineConfig):
    prompt: str = option("", "answer this prompt once and exit", short="-p")
    system: str = option("", "system prompt (chat mode)")


def check_sampling(cfg):
    """The sampling flags' values checked (serve.py checks its own with them); returns cfg."""
    if (cfg.temperature < 0 or not 0 < cfg.top_p <= 1 or cfg.top_k < 0
            or cfg.repetition_penalty <= 0):
        raise UserError("need --temperature >= 0, 0 < --top-p <= 1, --top-k >= 0, "
                        "--repetition-penalty > 0")
    if cfg.max_new_tokens < 1:
        raise UserError("--max-new-tokens must be at least 1")
    return cfg


def parse_args(argv=None, overrides=None):
    """rundir.parse_config's flags (RUN_DIR positional, -p for --prompt), with the values
    checked. The server was `chat.py --serve` once; that command is told where it went."""
    args = sys.argv[1:] if argv is None else list(argv)
    if "--serve" in args:
        rest = shlex.join(a for a in args if a != "--serve")
        raise UserError(f"the server has its own command now: python serve.py {rest}")
    return check_sampling(parse_config(ChatConfig, argv, None, overrides))


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
        self.chat = is_chat(self.payload)  # fine-tuned on (or imported with) chat conversations
        self.context = self.model.context_length
        special = self.tok.special_tokens
        self.eot = special["<|endoftext|>"]
        # A chat answer ends where its template ends a turn (<|im_end|> in ChatML); a model that
        # opens a new turn has finished too (chat_templates names each family's stop tokens).
        self.stop_ids = {self.eot} | (chat_templates.stop_ids(self.tok) if self.chat else set())
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
        family = chat_templates.of(self.tok).family
        mode = (f"chat mode ({family} template, multi-turn)" if self.chat
                else "text mode: a pre-trained model continues your text "
                     "(no chat template, no history)")
        return (f"{self.name}: {self.arch}, stage {self.stage}, "
                f"{self.n_params / 1e6:.1f}M parameters "
                f"({self.weights}, generating in {self.dtype}), "
                f"context {self.context} tokens, on {self.device}. {mode}")

    def prompt_ids(self, messages):
        """Chat mode: the conversation in the run's template, ending with the assistant's header.
        Text mode: the messages' text after <|endoftext|>, the token that starts every document in
        pre-training."""
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
        # A SentencePiece-style tokenizer (sentencepiece_bpe.py) writes its first token without
        # the leading space ("▁Hello" -> "Hello"), as its decode of the whole answer does.
        first = getattr(tok, "first_bytes", None)
        try:
            for t in tokens:
                self.n_tokens += 1
                if t in self.engine.stop_ids:
                    self.finish_reason = "stop"
                    break
                if not tok.is_special(t):  # a stray special token is not text to show
                    data, first = (first(t), None) if first else (tok.id_to_bytes(t), None)
                    self.text += decoder.decode(data)
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
# main
# ---------------------------------------------------------------------------------------------
def main(argv=None, **overrides):
    """Chat or answer one prompt (-p or stdin), from flags in argv (or sys.argv) and
    keyword overrides (for notebooks: main(run_dir="out/dpo", prompt="Hi")). Returns the answer
    in -p mode."""
    cfg = parse_args(argv, overrides)
    if cfg.seed >= 0:
        torch.manual_seed(cfg.seed)
    engine = Engine(cfg.run_dir, check_device(cfg.device), cfg.dtype)
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
