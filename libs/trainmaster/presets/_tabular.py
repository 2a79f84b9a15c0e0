"""Shared by the preset scripts: read CSV files, split, write metrics.json.  Standalone on purpose
(only numpy and the standard library): the scripts run in an engine's runtime, not trainmaster's."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np


class DataError(Exception):
    """The input cannot be used; the message says why in words a user can act on."""


def say(message: str) -> None:
    print(message, flush=True)  # the agent streams stdout line by line


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data_url", required=True, help="a CSV file or a folder of CSV files (recursive)")
    parser.add_argument("--train_url", required=True, help="output folder (created if missing)")
    parser.add_argument("--label_column", default="label")
    parser.add_argument("--test_size", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # the validator refuses unknown parameters; a standalone run only warns
        say(f"warning: ignoring unknown arguments {unknown}")
    return args


def boolean(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def csv_files(data_url: str) -> list[Path]:
    root = Path(data_url)
    if root.is_file():
        return [root]
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() == ".csv")
    if not files:
        raise DataError(f"no .csv file under {root}")
    return files


def load(data_url: str, label_column: str) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Features (float32), label indices, the feature names and the class names (sorted)."""
    header: list[str] | None = None
    rows: list[list[str]] = []
    for path in csv_files(data_url):
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            head = next(reader, None)
            if head is None:
                continue
            head = [h.strip() for h in head]
            if header is None:
                header = head
            elif head != header:
                raise DataError(f"{path} has columns {head}, the first file had {header}")
            rows += [r for r in reader if r and any(cell.strip() for cell in r)]
    if header is None or not rows:
        raise DataError("the CSV files hold no rows")
    if label_column not in header:
        raise DataError(f"no column {label_column!r} (columns: {', '.join(header)}); set --label_column")
    li = header.index(label_column)
    features = [h for i, h in enumerate(header) if i != li]
    if not features:
        raise DataError("there is no feature column besides the label")
    x = np.empty((len(rows), len(features)), dtype=np.float32)
    labels: list[str] = []
    for n, row in enumerate(rows):
        if len(row) != len(header):
            raise DataError(f"row {n + 2} has {len(row)} cells, the header has {len(header)}")
        labels.append(row[li].strip())
        try:
            x[n] = [float(cell) for i, cell in enumerate(row) if i != li]
        except ValueError:
            raise DataError(f"row {n + 2}: every feature column must be numeric") from None
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise DataError(f"the label column {label_column!r} has fewer than two classes")
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[label] for label in labels], dtype=np.int64)
    return x, y, features, classes


def split(x: np.ndarray, y: np.ndarray, test_size: float, seed: int):
    """A shuffled, per-class (stratified) split; every class keeps at least one training row."""
    rng = np.random.default_rng(seed)
    test: list[int] = []
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        k = min(len(rows) - 1, round(len(rows) * test_size))
        test += rows[:k].tolist()
    mask = np.zeros(len(y), dtype=bool)
    mask[test] = True
    return x[~mask], x[mask], y[~mask], y[mask]


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, float]:
    if len(y_true) == 0:
        return {}
    f1s = []
    for c in range(n_classes):
        tp = int(np.sum((y_pred == c) & (y_true == c)))
        fp = int(np.sum((y_pred == c) & (y_true != c)))
        fn = int(np.sum((y_pred != c) & (y_true == c)))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return {"accuracy": float(np.mean(y_true == y_pred)), "f1_macro": float(np.mean(f1s))}


def write_metrics(out: Path, algorithm: str, args: argparse.Namespace, metrics: dict, *, rows_train: int,
                  rows_test: int, features: list[str], classes: list[str], started: float, model_file: str) -> None:
    body = {
        "algorithm": algorithm,
        "metrics": metrics,
        "rows": {"train": rows_train, "test": rows_test},
        "features": features,
        "classes": classes,
        "model_file": model_file,
        "parameters": {k: v for k, v in vars(args).items() if k not in ("data_url", "train_url")},
        "seconds": round(time.time() - started, 3),
    }
    (out / "metrics.json").write_text(json.dumps(body, indent=2) + "\n")
    say(f"metrics: {json.dumps(metrics)}; model in {out / model_file}")


def run(main) -> None:
    try:
        main()
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
