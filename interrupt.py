"""interrupt.py: Ctrl-C that ends a training run between two steps, on a checkpoint it can resume
from (the machinery behind train.py's loop; the same for pre-training, SFT and DPO).

    python train.py ...   # press Ctrl-C: "saving after this step"; again: stop at once, unsaved

A KeyboardInterrupt can land anywhere, for instance between the optimizer's update and the step
count, and a checkpoint saved there resumes one step off. So inside the loop Ctrl-C only raises a
flag, which the loop reads when a step is finished and logged; under torchrun the processes agree
on it, so every one stops after the same step.

Imports: torch (torch.distributed) and tqdm. Imported by train.py (train_loop).
"""
import contextlib
import signal
import threading

import torch
import torch.distributed as dist
from tqdm import tqdm


@contextlib.contextmanager
def ctrl_c_between_steps(device):
    """Inside the block Ctrl-C (SIGINT) only asks the loop to stop: pressed() says so at the end of
    a step, when the weights, the optimizer, the step count and log.jsonl agree (a
    KeyboardInterrupt between the optimizer's update and the step count would save a checkpoint
    that resumes one step off). Pressed again, it stops at once, saving nothing. Under torchrun
    the processes agree on it, so they all stop after the same step."""
    pressed = []

    def handler(signum, frame):
        if pressed:
            raise KeyboardInterrupt
        pressed.append(signum)
        tqdm.write("Ctrl-C: saving after this step (press it again to stop at once, unsaved)")

    def asked():
        if not dist.is_initialized():
            return bool(pressed)
        flag = torch.tensor([float(bool(pressed))], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    if threading.current_thread() is not threading.main_thread():  # signals reach the main one
        yield asked
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield asked
    finally:
        signal.signal(signal.SIGINT, previous)
