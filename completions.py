"""completions.py: OpenAI's legacy text completions (POST /v1/completions) for serve.py: the
request checked, the log-probabilities of a prompt's own tokens, and the `logprobs` object as
OpenAI returns it. This is what lm-evaluation-harness's `local-completions` model calls: with
`echo` and `logprobs` it reads the log-likelihood of every prompt token, which is all a
multiple-choice benchmark needs; without them it is plain text generation, whole or streamed.
serve.py passes every prompt and answer through its guard as on chat completions (guard.py): a
choice the guard stopped has finish_reason "content_filter" and no logprobs.

    POST /v1/completions {"prompt": "The capital of France is", "max_tokens": 0, "echo": true,
                          "logprobs": 5}
    -> choices[0].logprobs = {"tokens": [...], "token_logprobs": [null, -3.2, ...],
                              "top_logprobs": [null, {" capital": -1.1, ...}, ...],
                              "text_offset": [0, 3, ...]}

Imported by serve.py (which answers the route, with its batch, keys, limits, metrics and log).
Imports torch only: the model comes in from serve.py's engine.
"""
import torch
import torch.nn.functional as F


class BadRequest(ValueError):
    """A request to refuse with 400: the message, and the parameter at fault."""

    def __init__(self, message, param=None):
        super().__init__(message)
        self.param = param


def prompts_of(body, tok):
    """body["prompt"] as OpenAI allows it: a string, a list of strings, a list of token ids, or a
    list of lists of token ids (a batch, one choice each) -> [[token ids], ...]."""
    prompt = body.get("prompt")
    is_ids = lambda p: (isinstance(p, list) and p and all(
        isinstance(t, int) and not isinstance(t, bool) for t in p))
    if isinstance(prompt, str) or is_ids(prompt):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt or len(prompt) > 64 or not all(
            isinstance(p, str) or is_ids(p) for p in prompt):
        raise BadRequest("'prompt' must be a string, a list of token ids, or a list of at most "
                         "64 of either", "prompt")
    out = []
    for p in prompt:
        ids = tok.encode(p, allowed_special="none") if isinstance(p, str) else p
        if not ids or not all(0 <= t < tok.vocab_size for t in ids):
            raise BadRequest(f"a prompt must have at least one token, each below "
                             f"{tok.vocab_size}", "prompt")
        out.append(ids)
    return out


def check(body):
    """echo, and logprobs (how many alternatives per token, OpenAI allows 0 to 5; None: no
    logprobs object at all). A streamed answer is text only: its logprobs are not sent."""
    echo, logprobs = body.get("echo", False), body.get("logprobs")
    if body.get("stream") is True and logprobs is not None:
        raise BadRequest("'logprobs' is not supported with 'stream' on /v1/completions",
                         "logprobs")
    if not isinstance(echo, bool):
        raise BadRequest("'echo' must be true or false", "echo")
    if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int)
                                 or not 0 <= logprobs <= 5):
        raise BadRequest("'logprobs' must be an integer from 0 to 5", "logprobs")
    return echo, logprobs


def answer_ids(engine, generated, text):
    """The generated ids that make up the answer's text: without stop tokens, and cut where a
    stop string cut the text."""
    new = [t for t in generated if t not in engine.stop_ids]
    while new and len(engine.tok.decode(new)) > len(text):
        new.pop()
    return new


def choice(engine, index, ids, new, text, finish, echo, top, lock):
    """One entry of the response's choices: the text (after the prompt's own, with echo) and,
    when logprobs were asked for, the logprobs of the prompt (with echo) and of the answer. None
    where the guard stopped the choice: scores would tell what it held back."""
    logprobs = None
    if top is not None and finish != "content_filter":
        with lock:  # one scoring pass at a time, beside the batch
            chosen, alternatives = token_logprobs(engine.model, ids + new, top, engine.device)
        logprobs = logprobs_object(engine.tok, ids + new, chosen, alternatives,
                                   0 if echo else len(ids))
    return {"text": (engine.tok.decode(ids) if echo else "") + text, "index": index,
            "logprobs": logprobs, "finish_reason": finish}


def chunk(head, index, text, finish=None):
    """One event of a streamed completion: a piece of choice `index`'s text, or its end."""
    return dict(head, choices=[{"text": text, "index": index, "logprobs": None,
                                "finish_reason": finish}])


@torch.no_grad()
def token_logprobs(model, ids, top, device):
    """For each token of ids after the first: log p(token | the tokens before it), and the `top`
    likeliest alternatives there as [(id, log p)]. One forward pass over the whole sequence (the
    harness's echo request: the prompt is context + continuation), the window the model's
    context; the first token has nothing before it, hence OpenAI's null."""
    x = torch.tensor(ids[-model.context_length - 1:], device=device)
    lp = F.log_softmax(model(x[None, :-1])[0][0].float(), dim=-1)  # [T, V]
    chosen = lp.gather(1, x[1:, None])[:, 0].tolist()
    best = lp.topk(top, dim=-1) if top else None
    alternatives = ([list(zip(i.tolist(), v.tolist())) for v, i in zip(*best)] if top
                    else [[] for _ in chosen])
    skipped = len(ids) - len(x)  # tokens before the window: not scored
    return [None] * (1 + skipped) + chosen, [None] * (1 + skipped) + alternatives


def logprobs_object(tok, ids, chosen, alternatives, start, offset=0):
    """OpenAI's legacy logprobs for ids[start:]: the tokens as text, their log-probabilities
    (null for the first token of an echoed prompt), the alternatives as {text: log p} (including
    the token itself, as OpenAI does) and each token's character offset into the text."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for i in range(start, len(ids)):
        piece = tok.id_to_bytes(ids[i]).decode("utf-8", errors="replace")
        out["tokens"].append(piece)
        out["token_logprobs"].append(chosen[i])
        top = None
        if chosen[i] is not None:
            top = {tok.id_to_bytes(t).decode("utf-8", errors="replace"): v
                   for t, v in alternatives[i]}
            top.setdefault(piece, chosen[i])
        out["top_logprobs"].append(top)
        out["text_offset"].append(offset)
        offset += len(piece)
    return out
