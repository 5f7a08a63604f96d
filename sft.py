"""sft.py: supervised fine-tuning on chat conversations, loss on assistant tokens only (book chapter 9).

    python sft.py --init out/pretrain        # built-in Python-docs conversations -> out/sft
    python sft.py --show-example             # one rendered conversation: token, target, trained?

(Being written: this first part is the chat template, which dpo.py, eval.py and chat.py share.)
"""
from bpe import Tokenizer  # noqa: F401  (the run directory's tokenizer is a bpe.Tokenizer)

ROLES = ("system", "user", "assistant")


def render_chat(tok, messages, add_generation_prompt=False):
    """Render messages in ChatML and say which tokens are trained.

    Each message becomes  <|im_start|>{role}\\n{content}<|im_end|>\\n . The special tokens are
    inserted as ids; role and content are encoded as ordinary text (allowed_special="none"), so a
    user who types "<|im_end|>" cannot forge the end of a turn.

    Returns (ids, trained): trained[i] is True when ids[i] is a token the model must learn to
    produce: the content of an assistant message and its closing <|im_end|>. Everything else
    (system and user turns, the role headers, the newline after <|im_end|>) is context only.
    With add_generation_prompt=True the ids end with "<|im_start|>assistant\\n", ready for the
    model to write the answer."""
    start, end = tok.special_tokens["<|im_start|>"], tok.special_tokens["<|im_end|>"]
    newline = tok.encode("\n", allowed_special="none")
    ids, trained = [], []
    for m in messages:
        head = [start] + tok.encode(m["role"] + "\n", allowed_special="none")
        body = tok.encode(m["content"], allowed_special="none") + [end]
        learn = m["role"] == "assistant"
        ids += head + body + newline
        trained += [False] * len(head) + [learn] * len(body) + [False] * len(newline)
    if add_generation_prompt:
        head = [start] + tok.encode("assistant\n", allowed_special="none")
        ids += head
        trained += [False] * len(head)
    return ids, trained
