"""Preset ``torch-mlp``: a PyTorch multi-layer perceptron classifier on CSV data, on the CPU.

Run by the agent as ``--data_url=<input> --train_url=<output> --name=value ...`` (hyperparameters
and their ranges: ``trainmaster algorithm show torch-mlp``); writes ``model.pt`` (state dict and
the feature scaling) and ``metrics.json``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from _tabular import base_parser, boolean, classification_metrics, load, parse, run, say, split, write_metrics


def build_parser():
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--hidden_units", type=int, default=64)
    parser.add_argument("--hidden_layers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--learning_rate", type=float, default=0.01)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--weight_decay", type=float, default=0.0)
    parser.add_argument("--standardize", type=boolean, default=True)
    return parser


def main(argv: list[str] | None = None) -> None:
    import torch
    from torch import nn

    args = parse(build_parser(), argv)
    started = time.time()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # small tabular data: threads cost more than they give
    x, y, features, classes = load(args.data_url, args.label_column)
    x_train, x_test, y_train, y_test = split(x, y, args.test_size, args.seed)
    mean = x_train.mean(axis=0) if args.standardize else np.zeros(x.shape[1], dtype=np.float32)
    std = x_train.std(axis=0) if args.standardize else np.ones(x.shape[1], dtype=np.float32)
    std[std == 0] = 1  # a constant column stays as it is
    to_tensor = torch.from_numpy
    xt, yt = to_tensor((x_train - mean) / std), to_tensor(y_train)
    layers: list[nn.Module] = []
    width = len(features)
    for _ in range(args.hidden_layers):
        layers += [nn.Linear(width, args.hidden_units), nn.ReLU()]
        width = args.hidden_units
    model = nn.Sequential(*layers, nn.Linear(width, len(classes)))
    optimiser = torch.optim.Adam(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    say(f"{len(y)} rows, {len(features)} features, {len(classes)} classes; torch {torch.__version__} on CPU")
    for epoch in range(1, args.epochs + 1):
        order = torch.randperm(len(yt))
        total = 0.0
        for start in range(0, len(order), args.batch_size):
            batch = order[start:start + args.batch_size]
            optimiser.zero_grad()
            loss = loss_fn(model(xt[batch]), yt[batch])
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch)
        if epoch == 1 or epoch == args.epochs or epoch % max(1, args.epochs // 5) == 0:
            say(f"epoch {epoch}/{args.epochs} loss {total / len(yt):.4f}")
    with torch.no_grad():
        predicted = model(to_tensor((x_test - mean) / std)).argmax(dim=1).numpy() if len(y_test) else y_test
    metrics = classification_metrics(y_test, predicted, len(classes))
    out = Path(args.train_url)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "mean": mean.tolist(), "std": std.tolist(),
                "features": features, "classes": classes, "hidden_units": args.hidden_units,
                "hidden_layers": args.hidden_layers}, out / "model.pt")
    write_metrics(out, "torch-mlp", args, metrics, rows_train=len(y_train), rows_test=len(y_test),
                  features=features, classes=classes, started=started, model_file="model.pt")


if __name__ == "__main__":
    run(main)
