"""Distributed data-parallel training with PyTorch (the trainmaster multi-node sample).

Every node of the job runs this script; the agents give each one ``MASTER_ADDR``, ``MASTER_PORT``,
``WORLD_SIZE`` and ``RANK`` (plus ``--data_url`` / ``--train_url`` and the run parameters).  The
nodes meet in ``init_process_group("gloo")`` — with a timeout, so a node whose peers never come
fails with a clear error instead of waiting forever — check that they really meet with an
all-reduce, then fit a small linear model on their shard of the data with
DistributedDataParallel.  Rank 0 writes ``model.pt`` and ``metrics.json``.

Standalone (one process): ``WORLD_SIZE=1 RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=29500 \\
python train.py --data_url ../data --train_url /tmp/out``
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_url", required=True)
    parser.add_argument("--train_url", required=True)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--timeout_s", type=float, default=60.0, help="how long to wait for the other nodes")
    parser.add_argument("--fail_rank", type=int, default=-1, help="this rank exits with code 3 (for tests)")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        print(f"ignoring unknown parameters: {unknown}", flush=True)
    return args


def load(data_url: str) -> tuple[torch.Tensor, torch.Tensor]:
    path = Path(data_url)
    files = sorted(path.rglob("*.csv")) if path.is_dir() else [path]
    rows = [row for f in files for row in csv.DictReader(f.open())]
    if not rows:
        raise SystemExit(f"no CSV rows under {data_url}")
    features = [k for k in rows[0] if k != "y"]
    x = torch.tensor([[float(r[k]) for k in features] for r in rows])
    y = torch.tensor([[float(r["y"])] for r in rows])
    return x, y


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    print(f"rank {rank}/{world}: meeting the others at {where}", flush=True)
    if rank == args.fail_rank:
        print(f"rank {rank}: failing on purpose", file=sys.stderr, flush=True)
        return 3
    started = time.monotonic()
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=args.timeout_s))
    # proof that every rank is there: the sum of (rank + 1) over all ranks
    check = torch.tensor([float(rank + 1)])
    dist.all_reduce(check)
    expected = world * (world + 1) / 2
    if check.item() != expected:
        raise SystemExit(f"all_reduce gave {check.item()}, expected {expected}")
    print(f"rank {rank}: all {world} ranks met (all_reduce {check.item():g}) in {time.monotonic() - started:.1f} s",
          flush=True)

    torch.manual_seed(0)
    x, y = load(args.data_url)
    shard_x, shard_y = x[rank::world], y[rank::world]  # each rank trains on its own slice
    model = DistributedDataParallel(torch.nn.Linear(x.shape[1], 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    loss_fn = torch.nn.MSELoss()
    for epoch in range(args.epochs):
        optimizer.zero_grad()
        loss = loss_fn(model(shard_x), shard_y)
        loss.backward()  # DDP averages the gradients over all ranks here
        optimizer.step()
        if epoch % 5 == 0 or epoch == args.epochs - 1:
            print(f"rank {rank}: epoch {epoch} loss {loss.item():.4f}", flush=True)

    # every rank holds the same weights after each step; check, then rank 0 saves them
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(weights) for _ in range(world)]
    dist.all_gather(gathered, weights)
    in_sync = all(torch.allclose(g, weights) for g in gathered)
    final = torch.tensor([loss.item()])
    dist.all_reduce(final)
    if rank == 0:
        out = Path(args.train_url)
        out.mkdir(parents=True, exist_ok=True)
        torch.save(model.module.state_dict(), out / "model.pt")
        metrics = {"world_size": world, "epochs": args.epochs, "mean_final_loss": final.item() / world,
                   "replicas_in_sync": in_sync, "rows": int(x.shape[0])}
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        print(f"rank 0: saved model.pt and metrics.json: {metrics}", flush=True)
    # leave together, and tear the group down while the interpreter is whole: gloo's worker
    # threads hold work objects with tensors (DDP's reducer keeps the group alive), and a process
    # that exits with them lets finalisation free those tensors without the GIL, which aborts it
    # ("terminate called without an active exception"); destroy_process_group joins the threads
    dist.barrier()
    del model
    dist.destroy_process_group()
    return 0 if in_sync else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
