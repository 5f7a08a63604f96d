"""LoRA (lora.py) and the memory savers that come with it: step 0
equals the base model, merged equals unmerged, only the adapters train, adapters off is the base
(DPO's reference), exact resume, the adapter file and its base check, gradient checkpointing, and
the resource calculator against real models. Tiny models: seconds."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import cli_in_process
from test_dpo import pairs_file  # noqa: F401 (a fixture)
import dpo
import gpt
import lora
import minimind
import rundir
import sft
import train
from rundir import UserError
from test_sft import chat_file  # a small chat .jsonl

ROOT = Path(__file__).resolve().parent.parent


def tiny(kind):
    torch.manual_seed(0)
    if kind == "gpt":
        return gpt.GPT(gpt.GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50))
    moe = dict(n_experts=3, top_k=2) if kind == "moe" else {}
    return minimind.MiniMind(minimind.MiniMindConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=50,
                                                     max_seq_len=16, qkv_bias=True, **moe))


def ids(seed=1):
    return torch.randint(50, (2, 12), generator=torch.Generator().manual_seed(seed))


def randomise_adapters(model, seed=2):
    """Trained-looking adapters: B is no longer zero."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.data = torch.randn(p.shape, generator=g) * 0.1


@pytest.mark.parametrize("kind", ["minimind", "gpt", "moe"])
@pytest.mark.parametrize("embeddings", [False, True])
def test_step_zero_is_the_base_model_exactly(kind, embeddings):
    model = tiny(kind).eval()
    with torch.no_grad():
        before = model(ids())[0]
    names = lora.add_lora(model, rank=4, alpha=8, targets="all", embeddings=embeddings)
    with torch.no_grad():
        after = model(ids())[0]
    assert torch.equal(after, before)  # B = 0: not close, equal
    per_block = {"minimind": 7, "gpt": 4, "moe": 4 + 3 * 3}[kind]  # MoE: q, k, v, o, 3 experts' MLPs
    assert len(names) == 2 * per_block + (2 if embeddings else 0)
    assert not any(n.endswith("mlp.gate") for n in names)  # the router is not adapted
    assert any(n.endswith("lm_head") for n in names) == embeddings


@pytest.mark.parametrize("kind", ["minimind", "gpt"])
@pytest.mark.parametrize("embeddings", [False, True])
def test_merged_equals_unmerged(kind, embeddings):
    model = tiny(kind).eval()
    lora.add_lora(model, rank=4, alpha=8, embeddings=embeddings)
    randomise_adapters(model)
    with torch.no_grad():
        lora_logits = model(ids())[0]
        plain = tiny(kind).eval()  # a fresh plain model gets the merged weights, as load_run does
        plain.load_state_dict(lora.merged_state_dict(model))
        assert (plain(ids())[0] - lora_logits).abs().max() <= 1e-5
        base_logits = tiny(kind).eval()(ids())[0]
        assert (base_logits - lora_logits).abs().max() > 1e-3  # the adapters do change the model
        lora.merge_lora(model)  # in place: plain nn.Linear layers again
        assert not any(isinstance(m, lora.LoRALinear) for m in model.modules())
        assert (model(ids())[0] - lora_logits).abs().max() <= 1e-5
    assert set(model.state_dict()) == set(plain.state_dict())
    token_embedding = model.embed_tokens if kind == "minimind" else model.transformer.wte
    assert token_embedding.weight is model.lm_head.weight  # still one tied matrix


def test_tied_embedding_and_head_share_one_adapter():
    model = tiny("minimind")
    lora.add_lora(model, rank=4, alpha=8, embeddings=True)
    assert model.embed_tokens.lora_B is model.lm_head.lora_B and model.embed_tokens.weight is model.lm_head.weight
    randomise_adapters(model)
    merged = lora.merged_state_dict(model)
    assert torch.equal(merged["embed_tokens.weight"], merged["lm_head.weight"])
    assert merged["embed_tokens.weight"] is merged["lm_head.weight"]  # merged once, saved once
    assert not merged["embed_tokens.weight"].equal(tiny("minimind").embed_tokens.weight)


def test_adapters_off_is_the_base_model():
    base = tiny("minimind").eval()
    model = tiny("minimind").eval()
    lora.add_lora(model, rank=4, alpha=8, dropout=0.2, embeddings=True)
    randomise_adapters(model)
    with torch.no_grad(), lora.adapters_off(model):
        off = model(ids())[0]
    assert torch.equal(off, base(ids())[0])
    with torch.no_grad():
        assert not torch.equal(model(ids())[0], off)  # switched back on after the block


def test_only_the_adapters_get_gradients_and_sit_in_the_optimizer():
    model = tiny("minimind").train()
    lora.add_lora(model, rank=4, alpha=8, targets="attention")
    randomise_adapters(model)
    _, loss = model(ids(), ids(3))
    loss.backward()
    adapters = {n for n, _ in model.named_parameters() if "lora_" in n}
    assert adapters and all(".self_attn." in n for n in adapters)  # attention only, as asked
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (name in adapters), name
    opt = gpt.make_optimizer(model, 1e-3, 0.0, (0.9, 0.95))
    in_opt = {id(p) for group in opt.param_groups for p in group["params"]}
    assert in_opt == {id(p) for n, p in model.named_parameters() if n in adapters}


def test_targets_by_name_and_a_clear_refusal():
    model = tiny("minimind")
    assert lora.add_lora(model, 2, 4, targets="q_proj,v_proj") == [
        "layers.0.self_attn.q_proj", "layers.0.self_attn.v_proj", "layers.1.self_attn.q_proj",
        "layers.1.self_attn.v_proj"]
    assert len(lora.add_lora(tiny("gpt"), 2, 4, targets="mlp")) == 4  # c_fc and mlp.c_proj, 2 blocks
    with pytest.raises(UserError, match="no linear layer.*q_proj"):
        lora.add_lora(tiny("minimind"), 2, 4, targets="query")
    with pytest.raises(UserError, match="no linear layer"):
        lora.add_lora(tiny("minimind"), 2, 4, targets="lm_head")  # tied to the embedding: never


@pytest.mark.parametrize("kind", ["minimind", "gpt", "moe"])
def test_gradient_checkpointing_gives_the_same_gradients(kind):
    grads = []
    for checkpointing in (False, True):
        model = tiny(kind).train()
        for m in model.modules():  # dropout too: the recomputed block must draw the same mask
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.1
        model.grad_checkpoint = checkpointing
        torch.manual_seed(5)
        _, loss = model(ids(), ids(3))
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


# ---- runs: sft.py / dpo.py with LoRA --------------------------------------------------------


def lora_args(pretrained_run, data, out, *extra):
    return ["--init", str(pretrained_run), "--data", str(data), "--max-steps", "4", "--batch-size", "4",
            "--warmup-steps", "1", "--lr", "1e-2", "--eval-exact", "2", "--max-new-tokens", "2",
            "--eval-heldout", "4", "--lora-rank", "4", "--lora-alpha", "8", "--lora-dropout", "0.1",
            "--out-dir", str(out), *map(str, extra)]


def test_lora_run_resumes_bit_for_bit_and_writes_a_plain_run(tmp_path, pretrained_run):
    data = chat_file(tmp_path)
    sft.main(lora_args(pretrained_run, data, tmp_path / "straight"))
    sft.main(lora_args(pretrained_run, data, tmp_path / "split", "--halt-at", 2))
    sft.main(["--resume", "--out-dir", str(tmp_path / "split")])
    a, b = (rundir.read_model_file(tmp_path / d) for d in ("straight", "split"))
    assert a["model"].keys() == b["model"].keys() and a["step"] == b["step"] == 4
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    logs = [[r.get("loss") for r in rundir.read_log(tmp_path / d / "log.jsonl")] for d in ("straight", "split")]
    assert logs[0] == logs[1]
    # model.pt is an ordinary run: merged weights, no adapter tensors, opened by load_run
    model, _, payload = train.load_run(tmp_path / "straight")
    assert not any("lora" in k for k in a["model"])
    assert payload["lora"] == {"rank": 4, "alpha": 8.0, "dropout": 0.1, "targets": "all", "embeddings": False}
    assert payload["base"]["run"] == str(pretrained_run)
    init = rundir.read_model_file(pretrained_run)["model"]
    assert not torch.equal(a["model"]["layers.0.self_attn.q_proj.weight"], init["layers.0.self_attn.q_proj.weight"])
    assert torch.equal(a["model"]["layers.0.input_layernorm.weight"], init["layers.0.input_layernorm.weight"])
    # train_state.pt holds the adapters and their optimizer state only
    state = torch.load(tmp_path / "straight" / "train_state.pt", weights_only=True)
    assert state["trainable"] and all("lora_" in k for k in state["trainable"])
    n_adapters = sum(t.numel() for t in state["trainable"].values())
    moments = sum(t.numel() for s in state["optimizer"]["state"].values() for t in s.values() if t.dim())
    assert moments == 2 * n_adapters


def test_resume_refuses_a_changed_base(tmp_path, pretrained_run, capsys):
    base = tmp_path / "base"
    model, tok, payload = train.load_run(pretrained_run)
    rundir.save_model(base, model, tok, {"stage": "pretrain"})
    sft.main(lora_args(base, chat_file(tmp_path), tmp_path / "run", "--halt-at", 2))
    with torch.no_grad():
        model.norm.weight.mul_(1.5)  # someone trains the base run further in place
    rundir.save_model(base, model, tok, {"stage": "pretrain"})
    state_before = (tmp_path / "run" / "train_state.pt").read_bytes()
    status, _, err = cli_in_process(sft.main, ["--resume", "--out-dir", tmp_path / "run"], capsys)
    assert status == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {base}: not the weights this run's adapters")
    assert (tmp_path / "run" / "train_state.pt").read_bytes() == state_before


def test_saved_adapter_applies_to_its_base_and_is_refused_elsewhere(tmp_path, pretrained_run, capsys):
    out = tmp_path / "lora"
    sft.main(lora_args(pretrained_run, chat_file(tmp_path), out, "--save-adapter", "--lora-embeddings"))
    adapter = out / "adapter.pt"
    payload = torch.load(adapter, weights_only=True)
    assert payload["base"]["run"] == str(pretrained_run) and payload["lora"]["rank"] == 4
    assert adapter.stat().st_size < (out / "model.pt").stat().st_size / 4
    # applied to its base: the merged run's weights
    model, _, _ = train.load_run(pretrained_run)
    lora.apply_adapter(model, adapter)
    merged = rundir.read_model_file(out)["model"]
    assert all((model.state_dict()[k] - merged[k]).abs().max() <= 1e-6 for k in merged)
    # --max-steps 0 writes the base with the adapter merged as a run directory
    status, _, err = cli_in_process(sft.main, ["--init", pretrained_run, "--adapter", adapter, "--max-steps", "0",
                                               "--eval-exact", "2", "--max-new-tokens", "2", "--eval-heldout", "4",
                                               "--out-dir", tmp_path / "applied"], capsys)
    assert status == 0, err
    applied = rundir.read_model_file(tmp_path / "applied")["model"]
    assert all((applied[k] - merged[k]).abs().max() <= 1e-6 for k in merged)
    # another base (here: the LoRA run itself) is refused with one error line, nothing written
    status, _, err = cli_in_process(sft.main, ["--init", out, "--adapter", adapter, "--max-steps", "1",
                                               "--out-dir", tmp_path / "wrong"], capsys)
    assert status == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {adapter}: trained on the weights of {pretrained_run}")
    assert not (tmp_path / "wrong").exists()
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="junk.pt: cannot be loaded"):
        lora.apply_adapter(model, tmp_path / "junk.pt")


def test_lora_flags_are_checked(tmp_path, pretrained_run):
    for flags, why in ((["--lora-rank", "-1"], "--lora-rank must be"), (["--lora-dropout", "1"], "--lora-dropout"),
                       (["--save-adapter"], "--save-adapter needs --lora-rank"),
                       (["--adapter", str(tmp_path / "none.pt")], "no such file")):
        with pytest.raises(UserError, match=why):
            sft.main(["--init", str(pretrained_run), "--out-dir", str(tmp_path / "x"), *flags])
    with pytest.raises(UserError, match="need --init"):
        train.check_config(train.TrainConfig(lora_rank=8, out_dir=str(tmp_path / "y")))


def test_dpo_with_lora_has_no_second_copy(tmp_path, pretrained_run):
    policy, _, _ = train.load_run(pretrained_run)
    lora.add_lora(policy.train(), 4, 8)
    ref = dpo.make_reference(policy)
    assert not isinstance(ref, torch.nn.Module)  # a function of the same module, no deepcopy
    randomise_adapters(policy)
    x = ids() % policy.config.vocab_size
    base, _, _ = train.load_run(pretrained_run)
    assert torch.equal(ref(x)[0], base(x)[0]) and policy.training  # eval inside, training again after
    pairs = tmp_path / "pairs.jsonl"
    items = [it for it in sft.python_docs_conversations()[0] if it["kind"] != "doc"][:40]
    pairs.write_text("".join(json.dumps(p) + "\n" for p in dpo.builtin_pairs(items)))
    out = tmp_path / "dpo"
    dpo.main(["--init", str(pretrained_run), "--data", str(pairs), "--max-steps", "3", "--batch-size", "4",
              "--warmup-steps", "1", "--lr", "1e-2", "--eval-exact", "0", "--eval-heldout", "4", "--sft-weight", "0",
              "--lora-rank", "4", "--out-dir", str(out)])
    steps = [r for r in rundir.read_log(out / "log.jsonl") if "loss" in r]
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference at step 0
    assert steps[-1]["rewards/margins"] != 0  # the adapters moved away from the reference
    assert rundir.read_model_file(out)["stage"] == "dpo"


# ---- the resource calculator ----------------------------------------------------------------
def test_calculator_counts_lora_as_a_real_model_does(pretrained_run):
    cfg = sft.SFTConfig(init=str(pretrained_run), lora_rank=4, lora_targets="attention", batch_size=2)
    text, figures = sft.dry_run(cfg)
    model, _, _ = train.load_run(pretrained_run)
    lora.add_lora(model.train(), 4, 32.0, targets="attention")
    trained = [p for p in model.parameters() if p.requires_grad]
    assert figures["trained_params"] == sum(p.numel() for p in trained)
    opt = gpt.make_optimizer(model, 1e-3, 0.0, (0.9, 0.95))
    model(ids() % 320)[0].sum().backward()
    opt.step()
    state_bytes = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if t.dim())
    assert figures["memory"]["optimizer (AdamW m and v, fp32)"] == state_bytes
    assert figures["memory"]["gradients (fp32)"] == state_bytes // 2
    assert "trained (LoRA)" in text
    full = sft.dry_run(sft.SFTConfig(init=str(pretrained_run), batch_size=2))[1]
    assert full["memory"]["optimizer (AdamW m and v, fp32)"] == 8 * full["params"]
    assert figures["flops_per_step"] < full["flops_per_step"]  # frozen weights need no weight gradients
    ckpt = sft.dry_run(sft.SFTConfig(init=str(pretrained_run), batch_size=2, grad_checkpoint=True))[1]
    assert ckpt["memory"]["activations (one micro-batch)"] < full["memory"]["activations (one micro-batch)"]
    assert ckpt["flops_per_step"] > full["flops_per_step"]  # the recomputed forward passes


def test_dry_run_of_sft_and_dpo_from_the_command_line(pretrained_run, pairs_file, capsys):  # noqa: F811
    r = subprocess.run([sys.executable, "sft.py", "--init", str(pretrained_run), "--dry-run", "--preset",
                        "t4-lora"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "trained (LoRA)" in r.stdout and "T4" in r.stdout
    for extra, expect in ((["--lora-rank", "8", "--data", pairs_file], "x 2 rows"), ([], "DPO reference (frozen copy")):
        status, out, err = cli_in_process(dpo.main, ["--init", pretrained_run, "--dry-run", *extra], capsys)
        assert status == 0, err
        assert expect in out and "T4" in out


def test_dry_run_refuses_the_flags_a_run_would_refuse(pretrained_run):
    """The calculator answers only for a run that would start."""
    with pytest.raises(rundir.UserError, match="need --init"):
        train.main(["--lora-rank", "8", "--dry-run"])
    with pytest.raises(rundir.UserError, match="--save-adapter needs --lora-rank"):
        sft.main(["--init", str(pretrained_run), "--save-adapter", "--dry-run"])
    with pytest.raises(rundir.UserError, match="--lora-dropout"):
        dpo.main(["--init", str(pretrained_run), "--lora-rank", "4", "--lora-dropout", "1.5", "--dry-run"])


def test_continued_pre_training_with_lora_and_checkpointing(corpus, pretrained_run, tmp_path):
    out = tmp_path / "more"
    result = train.main(["--init", str(pretrained_run), "--data", str(corpus / "text.txt"), "--seq-len", "32",
                         "--batch-size", "4", "--max-steps", "3", "--warmup-steps", "1", "--lr", "1e-2",
                         "--eval-batches", "2", "--sample-tokens", "4", "--lora-rank", "4", "--grad-checkpoint",
                         "--out-dir", str(out)])
    assert math.isfinite(result["val_loss"])
    payload, init = rundir.read_model_file(out), rundir.read_model_file(pretrained_run)
    assert payload["stage"] == "pretrain" and payload["lora"]["rank"] == 4 and set(payload["model"]) == set(init["model"])
    changed = {k for k in init["model"] if not torch.equal(payload["model"][k], init["model"][k])}
    assert changed and all(k.endswith("_proj.weight") for k in changed)  # only adapted weights moved


def test_frozen_weights_in_half_precision_adapters_in_fp32():
    """What a GPU run in bf16/fp16 does (adapt_model), here on the CPU with bf16 autocast."""
    model = tiny("minimind").train()
    lora.add_lora(model, rank=4, alpha=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lora.keep_frozen_in(model, torch.bfloat16)
    for name, p in model.named_parameters():
        assert p.dtype == (torch.float32 if "lora_" in name else torch.bfloat16), name
    opt = gpt.make_optimizer(model, 1e-2, 0.0, (0.9, 0.95))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = model(ids())
    torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids(3).flatten()).backward()
    opt.step()
    assert all(p.grad.dtype == torch.float32 for n, p in model.named_parameters() if "lora_" in n)
    assert model.layers[0].self_attn.q_proj.lora_B.abs().sum() > 0  # the adapters moved
    with torch.no_grad():
        list(model.generate([1, 2, 3], max_new_tokens=3, temperature=0))  # no autocast: still runs
    merged = lora.merged_state_dict(model)
    assert all(t.dtype == torch.float32 for t in merged.values())
    # model.pt gets the base's fp32 weights (plus B A where adapted), not their bf16 roundings
    assert torch.equal(merged["norm.weight"], before["norm.weight"])
    assert torch.equal(merged["embed_tokens.weight"], before["embed_tokens.weight"])
    q = model.layers[0].self_attn.q_proj
    assert torch.equal(merged["layers.0.self_attn.q_proj.weight"],
                       before["layers.0.self_attn.q_proj.weight"] + q.delta().detach())
