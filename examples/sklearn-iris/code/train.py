"""Train a logistic-regression classifier on CSV data (the trainmaster scikit-learn sample).

Runs under the trainmaster agent, which passes ``--data_url=<input dir> --train_url=<output dir>``
plus the job's run parameters as ``--name=value``, and standalone::

    python train.py --data_url ../data --train_url /tmp/out

Writes ``model.joblib`` (a fitted Pipeline) and ``metrics.json`` into ``--train_url``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import joblib  # installed with scikit-learn
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler


class DataError(Exception):
    """The input cannot be used; the message says why in words a user can act on."""


def say(message: str) -> None:
    # flush each line: the agent streams stdout line by line while the job runs
    print(message, flush=True)


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_url", required=True, help="a CSV file or a directory of CSV files (recursive)")
    parser.add_argument("--train_url", required=True, help="output directory (created if missing)")
    parser.add_argument("--max_iter", type=int, default=200)
    parser.add_argument("--C", type=float, default=1.0, help="inverse regularisation strength")
    parser.add_argument("--label_column", default="species")
    parser.add_argument("--test_size", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    # run parameters meant for other scripts must not fail the job: warn and go on
    return parser.parse_known_args(argv)


def find_csv_files(data_url: Path) -> list[Path]:
    if data_url.is_file():
        return [data_url]
    if data_url.is_dir():
        # sorted, so that the row order (and thus the split) does not depend on the file system
        return sorted(p for p in data_url.rglob("*.csv") if p.is_file())
    raise DataError(f"--data_url {data_url} does not exist")


def read_rows(files: list[Path]) -> tuple[list[str], list[dict[str, str]]]:
    """All rows of all files; every file must have the same columns (in any order)."""
    header: list[str] | None = None
    rows: list[dict[str, str]] = []
    for path in files:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            if not columns:
                say(f"warning: {path} is empty, skipped")
                continue
            if header is None:
                header = columns
            elif set(columns) != set(header):
                raise DataError(f"{path} has columns {columns}, but {files[0]} has {header}")
            for row in reader:
                rows.append({k.strip(): (v or "").strip() for k, v in row.items() if k is not None})
        say(f"read {path}")
    if header is None or not rows:
        raise DataError("the CSV files contain no rows")
    return header, rows


def to_arrays(header: list[str], rows: list[dict[str, str]], label: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if label not in header:
        raise DataError(f"label column {label!r} not found; the columns are {header}")
    features = [c for c in header if c != label]
    if not features:
        raise DataError(f"no feature columns besides the label column {label!r}")
    x = np.empty((len(rows), len(features)), dtype=float)
    for i, row in enumerate(rows):
        for j, column in enumerate(features):
            try:
                x[i, j] = float(row[column])
            except ValueError as exc:
                raise DataError(f"row {i + 1}, column {column!r}: {row[column]!r} is not a number") from exc
    y = np.array([row[label] for row in rows])
    return x, y, features


def split(x: np.ndarray, y: np.ndarray, test_size: float, seed: int):
    _, counts = np.unique(y, return_counts=True)
    # stratify keeps the class balance of the held-out part; it needs two rows of every class
    stratify = y if counts.min() >= 2 else None
    return train_test_split(x, y, test_size=test_size, random_state=seed, stratify=stratify)


def train(args: argparse.Namespace) -> dict:
    files = find_csv_files(Path(args.data_url))
    if not files:
        raise DataError(f"no *.csv file found in {args.data_url}")
    say(f"found {len(files)} CSV file(s) in {args.data_url}")
    header, rows = read_rows(files)
    x, y, features = to_arrays(header, rows, args.label_column)
    classes = sorted(set(y.tolist()))
    if len(classes) < 2:
        raise DataError(f"the label column {args.label_column!r} has only one class: {classes}")
    say(f"{len(rows)} rows, {len(features)} features {features}, {len(classes)} classes {classes}")

    x_train, x_test, y_train, y_test = split(x, y, args.test_size, args.seed)
    model = Pipeline([
        ("scale", StandardScaler()),
        ("classify", LogisticRegression(C=args.C, max_iter=args.max_iter, random_state=args.seed)),
    ])
    say(f"training LogisticRegression(C={args.C}, max_iter={args.max_iter}) on {len(y_train)} rows")
    started = time.perf_counter()
    model.fit(x_train, y_train)
    say(f"trained in {time.perf_counter() - started:.3f}s "
        f"({int(model.named_steps['classify'].n_iter_.max())} iterations)")

    predicted = model.predict(x_test)
    metrics = {
        "accuracy": float(accuracy_score(y_test, predicted)),
        "f1_macro": float(f1_score(y_test, predicted, average="macro")),
        "n_train": len(y_train),
        "n_test": len(y_test),
        "classes": classes,
        "features": features,
        "params": {
            "C": args.C, "max_iter": args.max_iter, "label_column": args.label_column,
            "test_size": args.test_size, "seed": args.seed,
        },
    }
    say(f"held-out accuracy {metrics['accuracy']:.4f}, f1_macro {metrics['f1_macro']:.4f} on {len(y_test)} rows")

    out = Path(args.train_url)
    out.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, out / "model.joblib")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    say(f"wrote {out / 'model.joblib'} and {out / 'metrics.json'}")
    return metrics


def main(argv: list[str] | None = None) -> int:
    args, unknown = parse_args(argv)
    if unknown:
        say(f"warning: ignoring arguments this script does not know: {' '.join(unknown)}")
    try:
        train(args)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
