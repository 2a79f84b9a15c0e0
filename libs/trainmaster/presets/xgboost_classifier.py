"""Preset ``xgboost-classifier``: XGBoost gradient-boosted trees on CSV data.

Run by the agent as ``--data_url=<input> --train_url=<output> --name=value ...`` (hyperparameters
and their ranges: ``trainmaster algorithm show xgboost-classifier``); writes ``model.json`` (the
booster in XGBoost's own format) and ``metrics.json``.
"""

from __future__ import annotations

import time
from pathlib import Path

from _tabular import base_parser, classification_metrics, load, parse, run, say, split, write_metrics


def build_parser():
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--n_estimators", type=int, default=100)
    parser.add_argument("--max_depth", type=int, default=6)
    parser.add_argument("--learning_rate", type=float, default=0.3)
    parser.add_argument("--subsample", type=float, default=1.0)
    parser.add_argument("--colsample_bytree", type=float, default=1.0)
    parser.add_argument("--reg_lambda", type=float, default=1.0)
    return parser


def main(argv: list[str] | None = None) -> None:
    import xgboost as xgb

    args = parse(build_parser(), argv)
    started = time.time()
    x, y, features, classes = load(args.data_url, args.label_column)
    x_train, x_test, y_train, y_test = split(x, y, args.test_size, args.seed)
    say(f"{len(y)} rows, {len(features)} features, {len(classes)} classes; xgboost {xgb.__version__}")
    model = xgb.XGBClassifier(
        n_estimators=args.n_estimators, max_depth=args.max_depth, learning_rate=args.learning_rate,
        subsample=args.subsample, colsample_bytree=args.colsample_bytree, reg_lambda=args.reg_lambda,
        random_state=args.seed, n_jobs=1, tree_method="hist",
    )
    model.fit(x_train, y_train)
    metrics = classification_metrics(y_test, model.predict(x_test), len(classes))
    out = Path(args.train_url)
    out.mkdir(parents=True, exist_ok=True)
    model.save_model(out / "model.json")
    write_metrics(out, "xgboost-classifier", args, metrics, rows_train=len(y_train), rows_test=len(y_test),
                  features=features, classes=classes, started=started, model_file="model.json")


if __name__ == "__main__":
    run(main)
