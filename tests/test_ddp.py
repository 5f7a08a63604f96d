"""Data-parallel training (train.processes, DDP over gloo on the CPU): two processes with half the
batch each give the losses of one process with the whole batch, for each of the three stages
the one training loop runs: pre-training, SFT (the loss divided by the trained tokens of the
whole step, not of one process's rows) and DPO. One pair of processes, started with the
variables torchrun sets, runs all three (tests/ddp_worker.py)."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import dpo
import rundir
import sft
import train
from test_dpo import pairs_file  # noqa: F401 (a fixture)
from test_sft import chat_file
from test_train import tiny_args

ROOT = Path(__file__).resolve().parent.parent


def step_losses(run_dir):
    return [r["loss"] for r in rundir.read_log(Path(run_dir) / "log.jsonl") if "loss" in r]


def test_two_processes_equal_one_with_the_doubled_batch(corpus, pretrained_run, pairs_file, tmp_path):  # noqa: F811
    chat = ["--init", str(pretrained_run), "--data", str(chat_file(tmp_path)), "--max-steps", "3",
            "--warmup-steps", "1", "--lr", "3e-3", "--eval-exact", "0", "--eval-heldout", "2"]
    pref = ["--init", str(pretrained_run), "--data", str(pairs_file), "--max-steps", "3",
            "--warmup-steps", "1", "--lr", "1e-3", "--eval-exact", "0", "--eval-heldout", "2"]
    stages = {  # name: (module, arguments, whole batch)
        "train": ("train", tiny_args(corpus, "{out}", "--max-steps", "4"), 4),
        "sft": ("sft", chat, 8),
        "dpo": ("dpo", pref, 4)}

    def argv(name, world):
        module, args, batch = stages[name]
        out = str(tmp_path / f"{name}-{world}")
        args = [out if a == "{out}" else a for a in args]
        if "--out-dir" not in args:
            args += ["--out-dir", out]
        return args + ["--batch-size", str(batch // world)]

    for name, (module, _, _) in stages.items():
        {"train": train, "sft": sft, "dpo": dpo}[module].main(argv(name, 1))
    ports = []
    for _ in stages:  # a free port for each stage's process group
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps([[module, argv(name, 2), port]
                                for (name, (module, _, _)), port in zip(stages.items(), ports)]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"}
    logs = [tmp_path / f"rank{rank}.err" for rank in range(2)]  # files: a full pipe would stall a rank
    files = [log.open("w") for log in logs]
    procs = [subprocess.Popen([sys.executable, str(ROOT / "tests" / "ddp_worker.py"), str(plan)], cwd=ROOT,
                              env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                              stdout=subprocess.DEVNULL, stderr=err)
             for rank, err in enumerate(files)]
    try:
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p, err in zip(procs, files):
            p.kill()
            err.close()
    assert codes == [0, 0], "".join(log.read_text()[-2000:] for log in logs)
    for name in stages:
        assert step_losses(tmp_path / f"{name}-2") == pytest.approx(step_losses(tmp_path / f"{name}-1"), abs=1e-5), name
