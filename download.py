"""download.py: files over HTTP into a cache folder, and the Hugging Face hub's models (a
companion file).

    from download import cache_dir, download, fetch_hub_model
    download("https://example.org/big.txt", cache_dir() / "big.txt")   # progress bar, resumable
    folder = fetch_hub_model("hf:Qwen/Qwen2.5-0.5B")   # config, tokenizer, weights; cached

A download goes to NAME.part first and is renamed only when its size checks out, so an interrupted
download resumes with an HTTP Range request and never leaves a half file under the real name. An
HTTP error becomes one UserError line with advice for the status (401, 403, 404).

The hub client (the second half) is how a released model is downloaded: parse_hub_id reads
hf:OWNER/NAME@REVISION, fetch_hub_model fetches the files that make the model (HF_ENDPOINT and
HF_TOKEN as the huggingface_hub library reads them) and checks each as it arrives, and
release_folder(source) gives the folder of a release, fetched or a transformers directory.

Imported by data.py (the built-in downloads: TinyStories, Tiny Shakespeare) and convert.py (a
released model). Imports bpe.py's UserError, the project's one error type, and
safetensors_file.py, which checks the weights and JSON files the hub sends.
"""
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from bpe import UserError
from safetensors_file import (SAFETENSORS_INDEX, load_pytorch_bin, read_json,
                              read_safetensors_header, read_safetensors_index,
                              read_weight_map)


def cache_dir():
    """Where downloads and token caches live: $SLM_CACHE, else ~/.cache/slm."""
    path = Path(os.environ.get("SLM_CACHE", Path.home() / ".cache" / "slm"))
    path.mkdir(parents=True, exist_ok=True)
    return path


# A failed download's HTTP status -> what the user can do about it. Without a token the hub answers
# 401 for a private or gated model and for one that does not exist; 403: the token may not read it.
HTTP_ADVICE = {401: "not authorized: no such model, or a private or gated one (set HF_TOKEN)",
               403: "forbidden: accept the model's terms on its page, and check HF_TOKEN",
               404: "not found: no such model, revision or file"}


def download(url, dest, expected_size=None, headers=None):
    """Download url to dest once, with a progress bar; resumes a partial .part file with an HTTP
    Range request, checks the size against Content-Length (and expected_size), then renames.
    headers (e.g. a hub token) go to url only, never to a server it redirects to (a CDN).
    An HTTP error raises UserError from the urllib HTTPError, whose .code callers may read."""
    dest = Path(dest)
    if dest.exists():
        return dest
    part = dest.with_suffix(dest.suffix + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    for key, value in (headers or {}).items():
        request.add_unredirected_header(key, value)
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as e:
        advice = HTTP_ADVICE.get(e.code, e.reason)
        detail = e.headers.get("X-Error-Message")  # the hub says why in this header
        raise UserError(f"cannot download {url}: HTTP {e.code}, {advice}"
                        + (f" ({detail})" if detail else "")) from e
    except OSError as e:
        raise UserError(f"cannot download {url}: {e}")
    with response:
        if have and response.status != 206:  # the server ignored the Range: start again
            have = 0
        total = have + int(response.headers.get("Content-Length", 0) or 0)
        with (open(part, "ab" if have else "wb") as f,
              tqdm(total=total or None, initial=have, unit="B", unit_scale=True,
                   desc=f"download {dest.name}") as bar):
            while chunk := response.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if (total and size != total) or (expected_size and size != expected_size):
        raise UserError(f"download of {url} is incomplete ({size} bytes); run again to resume")
    os.replace(part, dest)
    return dest


# ---------------------------------------------------------------------------------------------
# The Hugging Face hub: how a released model is downloaded
#
# A model on the hub is a git repository of files, and every file has a plain HTTPS address:
#
#     {endpoint}/{owner}/{name}/resolve/{revision}/{file}
#     https://huggingface.co/Qwen/Qwen2.5-0.5B/resolve/main/config.json
#
# The endpoint comes from $HF_ENDPOINT (a mirror, or a test server), and $HF_TOKEN, when set, is
# sent as "Authorization: Bearer ..." for gated or private models: the same variables the
# huggingface_hub library reads. Large files answer with a redirect to a content server; the token
# is never sent there (download sends headers to the first address only).
#
# Files land in the cache as {cache}/hub/{owner}--{name}/{revision}/{file}, where {cache} is
# $SLM_CACHE or ~/.cache/slm. A revision is a branch, a tag or a commit; a branch is cached as it
# was when first fetched (fetch a commit id to pin a model; delete the folder to refresh).
# ---------------------------------------------------------------------------------------------
HUB_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json")
HUB_OPTIONAL = ("tokenizer_config.json", "generation_config.json")  # a 404 on these is fine


@dataclass(frozen=True)
class HubModel:
    """hf:OWNER/NAME@REVISION, parsed."""
    owner: str
    name: str
    revision: str = "main"

    def __str__(self):
        return f"hf:{self.owner}/{self.name}@{self.revision}"

    def url(self, file):
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
        revision = urllib.parse.quote(self.revision, safe="")  # refs/pr/1 -> refs%2Fpr%2F1
        return f"{endpoint}/{self.owner}/{self.name}/resolve/{revision}/{file}"

    def cache_folder(self):
        revision = urllib.parse.quote(self.revision, safe="")  # one folder, whatever it holds
        return cache_dir() / "hub" / f"{self.owner}--{self.name}" / revision


HUB_ID = re.compile(r"hf:([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+)(?:@(.+))?")


def parse_hub_id(spec):
    """'hf:Qwen/Qwen2.5-0.5B' -> HubModel('Qwen', 'Qwen2.5-0.5B', 'main');
    'hf:Qwen/Qwen2.5-0.5B@v1.0' -> revision 'v1.0'. The hub forbids '--' and '..' in names, which
    also keeps the cache folder {owner}--{name} unambiguous and inside the cache."""
    match = HUB_ID.fullmatch(spec)
    repo = f"{match[1]}/{match[2]}" if match else ""
    if not match or "--" in repo or ".." in repo or match[3] in (".", ".."):
        raise UserError(f"{spec}: not a hub model (expected hf:OWNER/NAME or "
                        f"hf:OWNER/NAME@REVISION)")
    return HubModel(match[1], match[2], match[3] or "main")


def hub_headers():
    """The HTTP headers for the hub: a bearer token when $HF_TOKEN is set."""
    token = os.environ.get("HF_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def fetch_hub_file(model, file, optional=False):
    """Download one file of a hub model into its cache folder (nothing when it is there), check
    that it is what its name says, and return its path; None for an optional file the hub does
    not have. A file that fails the check is deleted, so the next run fetches it again."""
    dest = model.cache_folder() / file
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        download(model.url(file), dest, headers=hub_headers())
    except UserError as e:
        if optional and getattr(e.__cause__, "code", None) == 404:
            return None
        raise UserError(f"{model}: {file}: {e}") from e.__cause__
    try:
        if file.endswith(".json"):
            read_json(dest)
        elif file.endswith(".safetensors"):
            read_safetensors_header(dest)
        elif file.endswith(".bin"):
            load_pytorch_bin(dest)
    except UserError as e:
        dest.unlink()
        raise UserError(f"{model}: {file} is damaged: {e}") from None
    return dest


def fetch_hub_weights(model):
    """The weights of a hub model -> the names of the files fetched: model.safetensors; or the
    index and every shard its weight_map names; or, only when there are no safetensors,
    pytorch_model.bin. Each absent choice costs one request answered 404."""
    if fetch_hub_file(model, "model.safetensors", optional=True):
        return ["model.safetensors"]
    index = fetch_hub_file(model, SAFETENSORS_INDEX, optional=True)
    if index:
        try:
            shards = sorted(set(read_weight_map(index).values()))
        except UserError as e:
            index.unlink()
            raise UserError(f"{model}: {SAFETENSORS_INDEX} is damaged: {e}") from None
        for shard in shards:
            try:
                fetch_hub_file(model, shard)
            except UserError as e:
                raise UserError(f"{e} (a shard named in {SAFETENSORS_INDEX})") from None
        read_safetensors_index(index)  # each tensor is in the shard the index says
        return [SAFETENSORS_INDEX, *shards]
    if fetch_hub_file(model, "pytorch_model.bin", optional=True):
        return ["pytorch_model.bin"]
    raise UserError(f"{model}: no weights on the hub (model.safetensors, {SAFETENSORS_INDEX} "
                    f"or pytorch_model.bin)")


def fetch_hub_model(spec):
    """'hf:OWNER/NAME[@REVISION]' -> the local folder holding its config.json, tokenizer files,
    generation_config.json (when the model has one) and weights.

    A complete fetch ends by writing fetched.json, the list of files it got; when that list is
    there and every file on it too, the next call returns at once without a single request."""
    model = parse_hub_id(spec)
    folder = model.cache_folder()
    manifest = folder / "fetched.json"
    if manifest.exists():
        try:
            files = read_json(manifest).get("files")
            if isinstance(files, list) and all(
                    isinstance(f, str) and (folder / f).exists() for f in files):
                return folder
        except UserError:
            pass  # a damaged list: fetch again (each file already here costs no request)
    files = []
    for file in HUB_FILES:
        if fetch_hub_file(model, file, optional=file in HUB_OPTIONAL):
            files.append(file)
    files += fetch_hub_weights(model)
    text = json.dumps({"model": str(model), "files": files}, indent=2)
    part = manifest.with_name(manifest.name + ".part")  # whole or not at all, as download() does
    part.write_text(text, encoding="utf-8")
    os.replace(part, manifest)
    return folder


def release_folder(source):
    """hf:OWNER/NAME[@REVISION] (fetched into the cache) or a transformers directory -> folder."""
    if source.startswith("hf:"):
        return fetch_hub_model(source)
    folder = Path(source)
    if not (folder / "config.json").is_file():
        raise UserError(f"{source}: not a transformers directory (no config.json) or hf:OWNER/NAME")
    return folder
