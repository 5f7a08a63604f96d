"""train.py: data reading, downloads, presets, schedule, resource calculator, checkpoints, exact
resume, DDP on CPU, and a tiny end-to-end run. Tiny models and a small text keep it to seconds."""
import http.server
import json
import math
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import data
import download
import gpt
import interrupt
import rundir
import train
from conftest import cli_in_process

ROOT = Path(__file__).resolve().parent.parent


def tiny_args(corpus, out, *extra):
    return ["--data", str(corpus / "text.txt"), "--tokenizer", str(corpus / "tok.json"), "--size", "nano",
            "--seq-len", "32", "--batch-size", "4", "--max-steps", "6", "--warmup-steps", "2",
            "--eval-every", "1000", "--eval-batches", "2", "--sample-tokens", "8", "--out-dir", str(out),
            *extra]


def losses(run_dir):
    rows = [json.loads(l) for l in (Path(run_dir) / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


# ---- data ----------------------------------------------------------------------------------
def test_read_txt_jsonl_and_folder(tmp_path):
    (tmp_path / "a.txt").write_text("hello world")
    (tmp_path / "b.jsonl").write_text('{"text": "one"}\n\n{"text": "two"}\n')
    assert list(data.read_documents(tmp_path / "a.txt")) == ["hello world"]
    assert list(data.read_documents(tmp_path / "b.jsonl")) == ["one", "two"]
    assert list(data.read_documents(tmp_path)) == ["hello world", "one", "two"]
    (tmp_path / "c.txt").write_text("story one\n<|endoftext|>\nstory two\n<|endoftext|>\n")  # TinyStories' layout
    assert list(data.read_documents(tmp_path / "c.txt")) == ["story one", "story two"]


@pytest.mark.parametrize("line, why", [("{not json", "not valid JSON"), ('{"txt": "x"}', '"text" string'),
                                       ('["text"]', '"text" string')])
def test_malformed_jsonl_names_file_and_line(tmp_path, line, why):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n")
    with pytest.raises(train.UserError, match=f"bad.jsonl:2: .*{why}"):
        list(data.read_documents(path))


def test_malformed_jsonl_cli_exit_2_and_no_damage(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"text": 3}\n')
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.pt").write_bytes(b"precious")
    status, _, err = cli_in_process(train.main, ["--data", path, "--out-dir", out, "--max-steps", "1", "--overwrite"],
                                    capsys)
    assert status == 2 and err.count("\n") == 1 and err.startswith(f"error: {path}:2:"), err
    assert (out / "model.pt").read_bytes() == b"precious"


def test_python_docs_corpus_is_fixed_and_large_enough():
    docs = data.python_docs_documents()
    text = "\n\n".join(docs)
    assert 0.8e6 < len(text.encode()) < 3e6
    assert docs == data.python_docs_documents()  # a fixed order
    assert any(name == "json.dumps" for name, _ in data.python_docs_entries())


def test_split_is_deterministic_and_disjoint():
    docs = [f"doc {i}" for i in range(100)]
    tr, va = data.split_documents(docs, 0.1)
    assert len(va) == 10 and len(tr) == 90 and not set(tr) & set(va)
    tr1, va1 = data.split_documents(["x" * 1000], 0.1)  # one long document: split at its end
    assert len(tr1[0]) == 900 and len(va1[0]) == 100


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves BODY at /file, honouring `Range: bytes=N-` as real servers do."""
    BODY = bytes(range(256)) * 400

    def do_GET(self):
        start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(self.BODY) - start))
        self.end_headers()
        self.wfile.write(self.BODY[start:])

    def log_message(self, *args):
        pass


def test_download_against_local_server_with_resume(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/file"
    try:
        dest = download.download(url, tmp_path / "a.bin", len(RangeHandler.BODY))
        assert dest.read_bytes() == RangeHandler.BODY
        part = tmp_path / "b.bin.part"  # an interrupted earlier download: resumed, not restarted
        part.write_bytes(RangeHandler.BODY[:1000])
        assert download.download(url, tmp_path / "b.bin").read_bytes() == RangeHandler.BODY
        with pytest.raises(train.UserError, match="incomplete"):
            download.download(url, tmp_path / "c.bin", expected_size=5)
        assert not (tmp_path / "c.bin").exists()
    finally:
        server.shutdown()


# ---- configuration, schedule, calculator ---------------------------------------------------
def test_presets_and_flag_overrides():
    cfg = train.parse_config(train.TrainConfig, ["--preset", "t4-small", "--batch-size", "8"], train.PRESETS)
    assert (cfg.size, cfg.seq_len, cfg.dtype, cfg.batch_size) == ("minimind2-small", 512, "fp16", 8)
    cfg = train.parse_config(train.TrainConfig, ["--preset", "cpu"], train.PRESETS, {"max_steps": 3})
    assert cfg.max_steps == 3 and cfg.size == "nano"
    cfg = train.parse_config(train.TrainConfig, ["-f", "/tmp/kernel.json"], train.PRESETS)  # Jupyter's args
    assert cfg.data == "python-docs"
    with pytest.raises(train.UserError, match="unknown preset"):
        train.parse_config(train.TrainConfig, ["--preset", "nope"], train.PRESETS)
    with pytest.raises(train.UserError, match="unknown argument.*--batchsize"):  # a typo is not ignored
        train.parse_config(train.TrainConfig, ["--batchsize", "3"], train.PRESETS)
    for bad, why in ((["--batch-size", "0"], "--batch-size must be at least 1"),
                     (["--val-fraction", "0"], "--val-fraction"), (["--lr", "-1"], "--lr must be positive")):
        with pytest.raises(train.UserError, match=why):
            train.check_config(train.parse_config(train.TrainConfig, bad, train.PRESETS))
    for name, (description, values) in train.PRESETS.items():
        assert description and set(values) <= {f.name for f in train.dataclasses.fields(train.TrainConfig)}
        _, figures = train.dry_run(train.TrainConfig(preset=name, **values))  # every preset builds
        if name == "gpt2-124m":
            assert figures["params"] == 124_439_808  # GPT-2 small exactly


def test_lr_schedule():
    lrs = [gpt.get_lr(s, 1.0, 0.1, 10, 100) for s in range(101)]  # the schedule of gpt.py serves train.py
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))  # never rises after warmup
    assert lrs[100] == pytest.approx(0.1)
    assert lrs[55] == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the cosine


def test_dry_run_figures_match_a_real_model(capsys):
    cfg = train.TrainConfig(size="nano", vocab_size=512, seq_len=32, batch_size=2, tokens_per_step=256)
    text, figures = train.dry_run(cfg)
    model = rundir.build_model("minimind", train.model_config("minimind", "nano", 512, 32))
    assert figures["params"] == sum(p.numel() for p in model.parameters())
    assert figures["tokens_per_step"] == 256
    opt = gpt.make_optimizer(model, 1e-3, 0.1, (0.9, 0.95))
    _, loss = model(torch.randint(512, (2, 32)), torch.randint(512, (2, 32)))
    loss.backward()
    opt.step()
    state_bytes = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if t.dim())
    assert figures["memory"]["optimizer (AdamW m and v, fp32)"] == state_bytes
    assert "T4" in text and "A100" in text
    status, out, _ = cli_in_process(train.main, ["--preset", "t4-small", "--dry-run"], capsys)
    assert status == 0 and "25,829,888" in out  # minimind2-small at vocab 6400


# ---- checkpoints ---------------------------------------------------------------------------
def test_killed_write_leaves_previous_file(tmp_path):
    path = tmp_path / "model.pt"
    rundir.atomic_write(path, lambda f: torch.save({"w": torch.ones(3)}, f))

    def dies_halfway(f):
        f.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rundir.atomic_write(path, dies_halfway)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))


def test_tiny_run_lowers_loss_and_writes_a_run_directory(corpus, tmp_path):
    out = tmp_path / "run"
    result = train.main(tiny_args(corpus, out, "--max-steps", "30", "--lr", "3e-3"))
    ls = losses(out)
    assert len(ls) == 30 and sum(ls[-5:]) / 5 < ls[0] - 0.5
    for name in ("model.pt", "tokenizer.json", "train_state.pt", "config.json", "log.jsonl", "loss.svg"):
        assert (out / name).exists(), name
    payload = torch.load(out / "model.pt", weights_only=True)
    assert payload["arch"] == "minimind" and payload["step"] == 30
    model, tok, meta = train.load_run(out)
    assert tok.vocab_size == 320 and math.isfinite(result["val_loss"])
    assert (out / "loss.svg").read_text().startswith("<svg")


def test_a_fresh_run_never_clobbers_an_existing_one(corpus, tmp_path):
    out = tmp_path / "run"
    train.main(tiny_args(corpus, out, "--max-steps", "2"))
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(train.UserError, match="already holds a run"):
        train.main(tiny_args(corpus, out, "--lr", "0.5"))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files
    train.main(tiny_args(corpus, out, "--max-steps", "3", "--overwrite"))
    assert torch.load(out / "model.pt", weights_only=True)["step"] == 3


def test_resume_survives_a_torn_log_line(corpus, tmp_path):
    out = tmp_path / "run"
    train.main(tiny_args(corpus, out, "--halt-at", "3"))
    with open(out / "log.jsonl", "a") as f:
        f.write('{"step": 4, "lo')  # the process was killed in the middle of a line
    train.main(tiny_args(corpus, out, "--resume"))
    assert len(losses(out)) == 6


def test_resume_is_exact(corpus, tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    train.main(tiny_args(corpus, full, "--dropout", "0.1"))
    train.main(tiny_args(corpus, split, "--dropout", "0.1", "--halt-at", "3"))
    assert len(losses(split)) == 3
    train.main(tiny_args(corpus, split, "--resume"))
    assert losses(split) == losses(full)  # bit for bit, step for step
    a = torch.load(full / "model.pt", weights_only=True)["model"]
    b = torch.load(split / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_gpt_model_trains_too(corpus, tmp_path):
    out = tmp_path / "gpt"
    train.main(tiny_args(corpus, out, "--model", "gpt", "--size", "cpu", "--max-steps", "3"))
    model, tok, meta = train.load_run(out)
    assert meta["arch"] == "gpt"


def test_ctrl_c_saves_and_exits_cleanly(corpus, tmp_path):
    import signal
    import time
    out = tmp_path / "run"
    # A shell that starts a job in the background (a CI runner may) makes it ignore Ctrl-C, and its
    # children inherit that; Python then installs no KeyboardInterrupt. The child gets it back.
    proc = subprocess.Popen([sys.executable, "train.py", *tiny_args(corpus, out, "--max-steps", "100000")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and len(losses(out) if (out / "log.jsonl").exists() else []) < 3:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-1000:]
    assert "interrupted: saved step" in stderr + stdout
    saved = torch.load(out / "model.pt", weights_only=True)["step"]
    assert saved == len(losses(out)) >= 3  # the checkpoint holds every step that was logged


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    # A learning rate this large with no clipping blows the weights up within a few steps; a
    # checkpoint is due after every step, so the run must stop before bad numbers reach one.
    status, _, err = cli_in_process(train.main, tiny_args(corpus, out, "--max-steps", "50", "--lr", "1e12",
                                                          "--grad-clip", "0", "--warmup-steps", "1", "--save-every", "1"),
                                    capsys)
    assert status == 2 and "error: loss" in err and "Traceback" not in err
    payload = torch.load(out / "model.pt", weights_only=True)
    assert payload["step"] < 50
    assert all(torch.isfinite(t).all() for t in payload["model"].values())


def test_init_continues_pre_training_from_a_run(corpus, pretrained_run, tmp_path):
    """--init: the run's model and tokenizer, a new run with a fresh optimizer (continued pre-training
    on new text, the researchers' use case)."""
    out = tmp_path / "more"
    common = ["--init", str(pretrained_run), "--data", str(corpus / "text.txt"), "--batch-size", "8",
              "--eval-batches", "2", "--sample-tokens", "4", "--out-dir", str(out)]
    result = train.main(common + ["--seq-len", "64", "--max-steps", "3", "--warmup-steps", "1", "--lr", "1e-3"])
    init_final = [r for r in rundir.read_log(pretrained_run / "log.jsonl") if r.get("eval") == "after"][0]
    assert result["before"]["val_loss"] == pytest.approx(init_final["val_loss"], abs=1e-6)  # step 0: the init model
    payload, init = rundir.read_model_file(out), rundir.read_model_file(pretrained_run)
    assert payload["init"] == str(pretrained_run) and payload["stage"] == "pretrain" and payload["step"] == 3
    assert payload["config"] == init["config"]
    assert (out / "tokenizer.json").read_text() == (pretrained_run / "tokenizer.json").read_text()
    assert not all(torch.equal(payload["model"][k], init["model"][k]) for k in init["model"])  # it trained
    with pytest.raises(train.UserError, match="at most 64 tokens"):
        train.main(common + ["--seq-len", "128", "--overwrite"])
    with pytest.raises(train.UserError, match="--tokenizer"):
        train.main(common + ["--tokenizer", str(corpus / "tok.json"), "--overwrite"])
    with pytest.raises(train.UserError, match="no such run directory"):
        train.main(["--init", str(tmp_path / "nothing"), "--out-dir", str(tmp_path / "x")])


def test_ctrl_c_asks_the_loop_to_stop_between_steps_and_twice_stops_at_once():
    import os
    import signal
    before = signal.getsignal(signal.SIGINT)
    with interrupt.ctrl_c_between_steps("cpu") as pressed:
        assert not pressed()
        os.kill(os.getpid(), signal.SIGINT)  # delivered to this (main) thread before the next line
        assert pressed()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # give the handler a bytecode boundary to run at
                pass
    assert signal.getsignal(signal.SIGINT) is before
