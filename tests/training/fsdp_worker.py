"""Train a tiny memlm model with torch's FSDP2 (``fully_shard`` per MemLMDecoderLayer) on the processes
torchrun starts (one process: no sharding), saving memlm's checkpoint at ``stop`` and, run again,
resuming from it: ``fsdp_worker.py OUT_DIR STOP`` then ``fsdp_worker.py OUT_DIR resume``.

Accelerate selects FSDP on GPUs only, so the FSDP test drives memlm's checkpoint code with torch's FSDP2
directly. Writes ``losses.json`` (the mean loss of each step, all processes) and the final model
(``save_pretrained``) into OUT_DIR.
"""

import json
import sys
from pathlib import Path

import torch
from accelerate import PartialState
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard

import memlm
from memlm.training.checkpointing import load_checkpoint, save_checkpoint, verify

STEPS, ROWS, LENGTH, VOCAB = 4, 4, 16, 64

if __name__ == "__main__":
    out, stop = Path(sys.argv[1]), sys.argv[2]
    out.mkdir(parents=True, exist_ok=True)
    state = PartialState(cpu=True)  # gloo under torchrun
    torch.manual_seed(0)
    model = memlm.MemLMForCausalLM(memlm.MemLMConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        hybrid_ratio="3:1"))
    if state.num_processes > 1:
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (step + 1))
    data = torch.randint(VOCAB, (STEPS, ROWS, LENGTH), generator=torch.Generator().manual_seed(1))
    checkpoint = out / "checkpoints" / "step_2"
    start, end, losses = 0, STEPS, []
    if stop == "resume":
        start = load_checkpoint(state, checkpoint, model, optimizer, scheduler, verify(checkpoint))
        losses = json.loads((out / "losses.json").read_text())
    elif stop != "all":
        end = int(stop)
    for step in range(start, end):
        rows = data[step].chunk(state.num_processes)[state.process_index]  # this process's share of the batch
        loss = model(input_ids=rows, labels=rows).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        mean = loss.detach().clone()
        if state.num_processes > 1:
            torch.distributed.all_reduce(mean, op=torch.distributed.ReduceOp.AVG)
        losses.append(mean.item())
    if end < STEPS:
        save_checkpoint(state, checkpoint, model, optimizer, scheduler, end, recipe={})
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if state.is_main_process:
        (out / "losses.json").write_text(json.dumps(losses))
        if end == STEPS:
            model.save_pretrained(out, state_dict=full, safe_serialization=True)
    state.wait_for_everyone()
