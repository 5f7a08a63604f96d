"""chat_templates.py: the chat template families, rendered in plain Python (a companion of sft.py).

A chat model was trained on conversations written one particular way, and it only answers well,
and stops, when it is prompted the same way. A release says which way in its chat template (a
Jinja program in tokenizer_config.json). slm does not run Jinja: it recognises the template's
family by its markers and writes the same text with one small function per family:

    family    a turn                                                       the turn ends with
    chatml    <|im_start|>user\\nHi<|im_end|>\\n                             <|im_end|>
    llama3    <|start_header_id|>user<|end_header_id|>\\n\\nHi<|eot_id|>      <|eot_id|>
    llama2    <s>[INST] <<SYS>>\\n...\\n<</SYS>>\\n\\nHi [/INST] Hello </s>     </s>
    mistral   <s>[INST] Hi[/INST] Hello</s>  (v0.3; v0.2: " [INST] Hi [/INST]")  </s>
    gemma     <bos><start_of_turn>user\\nHi<end_of_turn>\\n<start_of_turn>model\\n   <end_of_turn>
    phi3      <|user|>\\nHi<|end|>\\n<|assistant|>\\n                          <|end|>
    zephyr    <|user|>\\nHi</s>\\n<|assistant|>\\n                             </s>

    tok.chat_template = chat_templates.recognise(jinja_text, tok, "tokenizer_config.json")
    ids, trained = chat_templates.render(tok, messages, add_generation_prompt=False)
    chat_templates.stop_ids(tok)     # where a chat answer ends: {<|eot_id|>, ...} for Llama 3

render() is the one entry point: sft.render_chat (the loss mask: the assistant's words and the
token that ends its turn are trained, nothing else), dpo.py, eval.py, chat.py and serve.py all
render through it. A run directory records its template in chat_template.json (family and Jinja
text; none: ChatML, the template of a run trained here); exports carry that Jinja text unchanged
and the family's stop tokens.

Imports bpe.py (UserError) only. Imported by rundir.py (a run's template), sft.py (render_chat),
chat.py (stop tokens), eval.py and convert.py (import, exports).
"""
import json
import re
import time
from dataclasses import dataclass

from bpe import UserError

# Our own template, what a run trained here uses, as transformers and llama.cpp read it.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
    "+ '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% endif %}")


# ---------------------------------------------------------------------------------------------
# 1. One function per family: messages -> segments (text, trained, markup)
#
# `markup` text is the template's own: the special-token names in it become their ids. The
# rest (what users and the model wrote) is encoded as plain text, so a user who types
# "<|eot_id|>" cannot end a turn. `trained` marks what the model must learn to write: an
# assistant message's words and the token that ends its turn. `jinja` is the release's text,
# where a family's variants differ (Llama 3.1/3.2's dated system block, Mistral v0.2 vs v0.3).
# ---------------------------------------------------------------------------------------------
def said(text, end, learn):
    """A message's words and the end of its turn: [(text, learn, False), (end, learn, True)]."""
    return [(text, learn, False), (end, learn, True)]


def lines(messages, head, end):
    """Each message as head(role), its words, `end` and a newline: ChatML, Phi-3 and Zephyr."""
    out = []
    for m in messages:
        out += [(head(m["role"]), False, True)] + said(m["content"], end, m["role"] == "assistant")
        out += [("\n", False, True)]
    return out


# A system message written out in full in a ChatML template: the default that SmolLM2's and
# Qwen2.5's templates give a conversation without one.
DEFAULT_SYSTEM = re.compile(r"<\|im_start\|>system(?:\\n|\n)([^'\"<{]+)<\|im_end\|>")


def qwen3_answer(message, after_last_question, last):
    """An answer as Qwen3's template writes it: the reasoning (<think>...</think>) is dropped
    from answers before the last question; after it, the last answer (or one with reasoning)
    is written with its reasoning block, an empty one when it has none."""
    text, reasoning = message["content"], ""
    if "</think>" in text:
        reasoning = text.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
        text = text.split("</think>")[-1].lstrip("\n")
    if after_last_question and (last or reasoning):
        text = f"<think>\n{reasoning.strip(chr(10))}\n</think>\n\n{text.lstrip(chr(10))}"
    return {**message, "content": text}


def chatml(messages, gen, jinja):
    """ChatML: <|im_start|>role, the message, <|im_end|>; the release's default system message
    (SmolLM2, Qwen2.5) when the conversation has none; Qwen3's reasoning blocks."""
    default = DEFAULT_SYSTEM.search(jinja)
    if default and not (messages and messages[0]["role"] == "system"):
        messages = [{"role": "system", "content": default.group(1)}] + messages
    if "reasoning_content" in jinja:  # Qwen3
        question = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
        messages = [qwen3_answer(m, i > question, i == len(messages) - 1)
                    if m["role"] == "assistant" else m for i, m in enumerate(messages)]
    out = lines(messages, lambda role: f"<|im_start|>{role}\n", "<|im_end|>")
    return out + ([("<|im_start|>assistant\n", False, True)] if gen else [])


def split_system(messages):
    """(the system message's text or None, the other messages)."""
    if messages and messages[0]["role"] == "system":
        return messages[0]["content"], messages[1:]
    return None, messages


def llama3(messages, gen, jinja):
    """Llama 3: every message trimmed. Llama 3.1/3.2 (their template says "Cutting Knowledge
    Date") always open with a system block holding the dates, then the system message; the
    other messages are not trimmed there."""
    def header(role):
        return (f"<|start_header_id|>{role}<|end_header_id|>\n\n", False, True)
    out, trim = [("<|begin_of_text|>", False, True)], str.strip
    if "Cutting Knowledge Date" in jinja:
        system, messages = split_system(messages)
        today = time.strftime("%d %b %Y") if "strftime_now" in jinja else "26 Jul 2024"
        out += [header("system"), (f"Cutting Knowledge Date: December 2023\nToday Date: {today}"
                                   "\n\n", False, True)]
        out, trim = out + said((system or "").strip(), "<|eot_id|>", False), str
    for m in messages:
        learn = m["role"] == "assistant"
        out += [header(m["role"])] + said(trim(m["content"]), "<|eot_id|>", learn)
    return out + ([header("assistant")] if gen else [])


def llama2(messages, gen, jinja):
    """Llama 2: the system message goes inside the first [INST], between <<SYS>> markers; every
    user turn opens with <s>, every answer ends " </s>". There is no generation prompt: a prompt
    ends with [/INST] already."""
    system, messages = split_system(messages)
    out = []
    for i, m in enumerate(messages):
        text = m["content"]
        if i == 0 and system is not None:
            text = f"<<SYS>>\n{system}\n<</SYS>>\n\n{text}"
        if m["role"] == "user":
            out += [("<s>[INST] ", False, True), (text.strip(), False, False),
                    (" [/INST]", False, True)]
        else:
            out += said(f" {text.strip()} ", "</s>", True)
    return out


def mistral(messages, gen, jinja):
    """Mistral: one <s> at the start, no <<SYS>>. v0.3 (its template has `loop.last and
    system_message`) puts the system message before the LAST user message, and only when the
    conversation ends with it; v0.2 before the first, with spaces around [INST] and [/INST]."""
    system, messages = split_system(messages)
    v3 = "loop.last and system_message" in jinja
    out = [("<s>", False, True)]
    for i, m in enumerate(messages):
        text = m["content"]
        if system is not None and m["role"] == "user" and i == (len(messages) - 1 if v3 else 0):
            text = f"{system}\n\n{text}"
        if m["role"] == "user":
            out += [("[INST] " if v3 else " [INST] ", False, True), (text, False, False),
                    ("[/INST]" if v3 else " [/INST]", False, True)]
        else:
            out += said(" " + (text.strip() if v3 else text), "</s>", True)
    return out


def gemma(messages, gen, jinja):
    """Gemma: roles user and model, trimmed messages, no system role: as Gemma 3's template does,
    the system message opens the first user turn, followed by a blank line."""
    system, messages = split_system(messages)
    out = [("<bos>", False, True)]
    for i, m in enumerate(messages):
        role = "model" if m["role"] == "assistant" else m["role"]
        prefix = f"{system}\n\n" if i == 0 and system is not None else ""
        out += [(f"<start_of_turn>{role}\n", False, True)]
        out += [(prefix, False, False)] if prefix else []
        out += said(m["content"].strip(), "<end_of_turn>", role == "model")
        out += [("\n", False, True)]
    return out + ([("<start_of_turn>model\n", False, True)] if gen else [])


def phi3(messages, gen, jinja):
    """Phi-3: <|role|> on a line, the message, <|end|>; a conversation without the generation
    prompt ends with the end-of-text token."""
    out = lines(messages, lambda role: f"<|{role}|>\n", "<|end|>")
    return out + [("<|assistant|>\n" if gen else "<|endoftext|>", False, True)]


def zephyr(messages, gen, jinja):
    """Zephyr (and TinyLlama's chat models): like Phi-3's, each message ending with </s>."""
    out = lines(messages, lambda role: f"<|{role}|>\n", "</s>")
    return out + ([("<|assistant|>\n", False, True)] if gen else [])


# ---------------------------------------------------------------------------------------------
# 2. The families: how each is recognised, what it needs, where it stops, its own Jinja text
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    render: object   # one of the functions above
    markers: tuple   # strings every template of the family contains
    needs: tuple     # special tokens the tokenizer must have (the first ends a turn)
    stops: tuple     # where generation stops: the end of a turn, the end of the text
    jinja: str       # the family's template, for a run that chose it without a release's text
    bos: str = None  # what the Jinja text calls bos_token and eos_token (Phi-3's eos_token ends
    eos: str = None  # the text, not a turn); eos None: the token that ends a turn


LLAMA3_JINJA = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}")
LLAMA2_JINJA = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set "
    "system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + "
    "system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = "
    "message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' "
    "+ content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' ' + "
    "content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")
MISTRAL_JINJA = (
    "{% if messages[0]['role'] == 'system' %}{% set system_message = messages[0]['content'] %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set loop_messages = messages %}{% endif %}"
    "{{ bos_token }}{% for message in loop_messages %}{% if message['role'] == 'user' %}"
    "{% if loop.last and system_message is defined %}{{ '[INST] ' + system_message + '\\n\\n' + "
    "message['content'] + '[/INST]' }}{% else %}{{ '[INST] ' + message['content'] + '[/INST]' }}"
    "{% endif %}{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] | trim + "
    "eos_token }}{% endif %}{% endfor %}")
GEMMA_JINJA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first_user_prefix = "
    "messages[0]['content'] + '\\n\\n' %}{% set loop_messages = messages[1:] %}{% else %}"
    "{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}{% if message['role'] == 'assistant' %}{% set role = "
    "'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role "
    "+ '\\n' + (first_user_prefix if loop.first else '') + message['content'] | trim + "
    "'<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}"
    "{% endif %}")
ROLE_TAGS = ("{% for message in messages %}{% if message['role'] == 'user' %}{% set tag = "
             "'<|user|>' %}{% elif message['role'] == 'assistant' %}{% set tag = '<|assistant|>' %}"
             "{% else %}{% set tag = '<|system|>' %}{% endif %}")
PHI3_JINJA = (ROLE_TAGS + "{{ tag + '\\n' + message['content'] + '<|end|>\\n' }}{% endfor %}"
              "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}"
              "{% endif %}")
ZEPHYR_JINJA = (ROLE_TAGS + "{{ tag + '\\n' + message['content'] + eos_token + '\\n' }}"
                "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}")


# The same templates in Ollama's Go template syntax, for the Modelfile. Ollama's .Messages holds
# the system message too; `$s` carries it to where the family writes it.
OLLAMA = {
    "chatml": "{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
              "<|im_start|>assistant\n",
    "llama3": "<|begin_of_text|>{{ range .Messages }}<|start_header_id|>{{ .Role }}"
              "<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant"
              "<|end_header_id|>\n\n",
    "llama2": "{{ $s := \"\" }}{{ range .Messages }}{{ if eq .Role \"system\" }}{{ $s = .Content }}"
              "{{ else if eq .Role \"user\" }}<s>[INST] {{ if $s }}<<SYS>>\n{{ $s }}\n<</SYS>>\n\n"
              "{{ $s = \"\" }}{{ end }}{{ .Content }} [/INST]{{ else }} {{ .Content }} </s>"
              "{{ end }}{{ end }}",
    "mistral": "<s>{{ $s := \"\" }}{{ range $i, $m := .Messages }}{{ if eq .Role \"system\" }}"
               "{{ $s = .Content }}{{ else if eq .Role \"user\" }}[INST] {{ if and $s (eq (len "
               "(slice $.Messages $i)) 1) }}{{ $s }}\n\n{{ end }}{{ .Content }}[/INST]{{ else }} "
               "{{ .Content }}</s>{{ end }}{{ end }}",
    "gemma": "<bos>{{ $s := false }}{{ range .Messages }}{{ if eq .Role \"system\" }}"
             "<start_of_turn>user\n{{ .Content }}\n\n{{ $s = true }}{{ else if eq .Role "
             "\"assistant\" }}<start_of_turn>model\n{{ .Content }}<end_of_turn>\n{{ else }}"
             "{{ if not $s }}<start_of_turn>user\n{{ end }}{{ $s = false }}{{ .Content }}"
             "<end_of_turn>\n{{ end }}{{ end }}<start_of_turn>model\n",
    "phi3": "{{ range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n",
    "zephyr": "{{ range .Messages }}<|{{ .Role }}|>\n{{ .Content }}</s>\n{{ end }}<|assistant|>\n",
}

FAMILIES = {  # in the order tried: Llama 2's markers before Mistral's, Phi-3's before Zephyr's
    "chatml": Family(chatml, markers=("<|im_start|>", "<|im_end|>"),
                     needs=("<|im_end|>", "<|im_start|>"),
                     stops=("<|im_end|>", "<|im_start|>", "<|endoftext|>"), jinja=CHATML_TEMPLATE),
    "llama3": Family(llama3, markers=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
                     needs=("<|eot_id|>", "<|begin_of_text|>", "<|start_header_id|>",
                            "<|end_header_id|>"),
                     stops=("<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"), jinja=LLAMA3_JINJA,
                     bos="<|begin_of_text|>"),
    "llama2": Family(llama2, markers=("[INST]", "<<SYS>>"), needs=("</s>", "<s>"),
                     stops=("</s>",), jinja=LLAMA2_JINJA, bos="<s>"),
    "mistral": Family(mistral, markers=("[INST]",), needs=("</s>", "<s>"), stops=("</s>",),
                      jinja=MISTRAL_JINJA, bos="<s>"),
    "gemma": Family(gemma, markers=("<start_of_turn>", "<end_of_turn>"),
                    needs=("<end_of_turn>", "<bos>", "<start_of_turn>"),
                    stops=("<end_of_turn>", "<eos>"), jinja=GEMMA_JINJA, bos="<bos>"),
    "phi3": Family(phi3, markers=("<|user|>", "<|end|>", "<|assistant|>"),
                   needs=("<|end|>", "<|user|>", "<|assistant|>"),
                   stops=("<|end|>", "<|endoftext|>"), jinja=PHI3_JINJA, eos="<|endoftext|>"),
    "zephyr": Family(zephyr, markers=("<|user|>", "<|assistant|>", "eos_token"), needs=("</s>",),
                     stops=("</s>",), jinja=ZEPHYR_JINJA),
}
CHOICES = "|".join(FAMILIES)


@dataclass(frozen=True)
class Template:
    """A run's chat template: its family's name and the Jinja text exports carry."""
    family: str
    jinja: str

    @property
    def spec(self):
        return FAMILIES[self.family]


CHATML = Template("chatml", CHATML_TEMPLATE)


def check_tokens(template, tok, where):
    """The template, once the tokenizer is known to have the special tokens it writes."""
    missing = [n for n in template.spec.needs if n not in tok.special_tokens]
    if missing:
        raise UserError(f"{where}: the {template.family} chat template needs the special "
                        f"tokens {missing}, which this tokenizer does not have")
    return template


def family_of(jinja):
    """The family whose markers the Jinja text holds (in FAMILIES' order), or None."""
    return next((name for name, f in FAMILIES.items() if all(m in jinja for m in f.markers)), None)


def recognise(jinja, tok, where, choice=""):
    """A release's template (Jinja text) -> its Template. `choice` (--chat-template) names the
    family instead; the release's text is kept when it is of that family, else the family's own
    text is what exports carry. A template no family fits is an error that says how to choose."""
    found = family_of(jinja)
    if choice:
        if choice not in FAMILIES:
            raise UserError(f"--chat-template must be one of {CHOICES}; got {choice!r}")
        return check_tokens(Template(choice, jinja if found == choice else
                                     FAMILIES[choice].jinja), tok, where)
    if found is None:
        raise UserError(f"{where}: its chat template is none that slm knows ({CHOICES}); "
                        f"choose how to write chats with --chat-template {CHOICES}")
    return check_tokens(Template(found, jinja), tok, where)


# ---------------------------------------------------------------------------------------------
# 3. The one entry point: a conversation -> ids and what is trained
# ---------------------------------------------------------------------------------------------
def of(tok):
    """The tokenizer's chat template (rundir.load_tokenizer attaches a run's); ChatML if none."""
    return getattr(tok, "chat_template", None) or CHATML


def render(tok, messages, add_generation_prompt=False):
    """Render messages in the tokenizer's template and say which tokens are trained.

    Returns (ids, trained): trained[i] is True when ids[i] is a token the model must learn to
    produce: the words of an assistant message and the token that ends its turn. Text between
    two special tokens is encoded in one piece when its trained flag does not change, as
    `tokenizers` encodes the whole rendered string (it, too, splits at special tokens first)."""
    template = of(tok)
    segments = template.spec.render(messages, add_generation_prompt, template.jinja)
    names = sorted(tok.special_tokens, key=len, reverse=True)
    split = re.compile("(" + "|".join(map(re.escape, names)) + ")") if names else None
    ids, trained, text, learn = [], [], "", False

    def flush():
        encoded = tok.encode(text, allowed_special="none") if text else []
        ids.extend(encoded)
        trained.extend([learn] * len(encoded))
    for part, flag, markup in segments:
        pieces = split.split(part) if markup and split else [part]
        for k, piece in enumerate(pieces):
            if k % 2:  # a special token of the template's
                flush()
                text = ""
                ids.append(tok.special_tokens[piece])
                trained.append(flag)
            elif piece:
                if flag != learn:
                    flush()
                    text = ""
                text, learn = text + piece, flag
    flush()
    return ids, trained


def export_tokens(tok, chat):
    """What an export writes about the run's template: its Jinja text, the names of the tokens
    the text calls bos_token (None: it has none) and eos_token, and the token that ends a turn.
    A pre-trained run ends its text with <|endoftext|> (its template stays ChatML's: fine-tuning
    it writes ChatML). stop_ids(tok) adds the other tokens a chat stops at."""
    template = of(tok)
    if not chat:
        return {"template": template.jinja, "bos": None, "eos": "<|endoftext|>",
                "eot": "<|endoftext|>"}
    return {"template": template.jinja, "bos": template.spec.bos,
            "eos": template.spec.eos or template.spec.needs[0], "eot": template.spec.needs[0]}


def stop_names(tok):
    """The tokens a chat stops at, by name: the template's end of a turn first, then the others
    it stops at (a new turn, the end of the text), <|endoftext|> last."""
    names = [n for n in of(tok).spec.stops + ("<|endoftext|>",) if n in tok.special_tokens]
    return list(dict.fromkeys(names))


def stop_ids(tok):
    """The ids generation stops at in a chat (stop_names)."""
    return {tok.special_tokens[n] for n in stop_names(tok)}


def end_id(tok):
    """The id of the token that ends an assistant's turn (the one SFT teaches)."""
    return tok.special_tokens[of(tok).spec.needs[0]]


# ---------------------------------------------------------------------------------------------
# 4. In a run directory: chat_template.json, {"family": ..., "template": ...}
# ---------------------------------------------------------------------------------------------
FILE = "chat_template.json"


def as_json(template):
    """The text of chat_template.json for this template, or None for ChatML (no file)."""
    if template is None or template == CHATML:
        return None
    return json.dumps({"family": template.family, "template": template.jinja}, indent=1)


def load(run_dir, tok):
    """A run directory's template: chat_template.json's, or ChatML when there is none."""
    path = run_dir / FILE
    if not path.exists():
        return CHATML
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return check_tokens(Template(data["family"], data["template"]), tok, path)
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a chat template file ({e})")
