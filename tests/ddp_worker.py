"""Started twice by tests/test_ddp.py with RANK, WORLD_SIZE and MASTER_ADDR set, as torchrun
would start it: each process runs the stages in the JSON file argv[1] ([[module, [args...],
port], ...]) one after another, as `python module.py args...` would. Each stage opens and
closes its own process group (train.processes) on its own port, so one pair of processes
serves pre-training, SFT and DPO: a torch import costs seconds, three launches more."""
import importlib
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

for module, args, port in json.loads(Path(sys.argv[1]).read_text()):
    os.environ["MASTER_PORT"] = str(port)
    importlib.import_module(module).main(args)
