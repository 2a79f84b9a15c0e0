"""Preset ``sklearn-classifier``: a scikit-learn classifier on CSV data.

Run by the agent as ``--data_url=<input> --train_url=<output> --name=value ...`` (hyperparameters
and their ranges: ``trainmaster algorithm show sklearn-classifier``); writes ``model.joblib``
(a fitted Pipeline) and ``metrics.json``.
"""

from __future__ import annotations

import time
from pathlib import Path

from _tabular import base_parser, classification_metrics, load, parse, run, say, split, write_metrics


def build_parser():
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--model", default="random_forest",
                        choices=["random_forest", "logistic_regression", "gradient_boosting"])
    parser.add_argument("--n_estimators", type=int, default=100)
    parser.add_argument("--max_depth", type=int, default=0)
    parser.add_argument("--C", type=float, default=1.0)
    parser.add_argument("--max_iter", type=int, default=500)
    return parser


def main(argv: list[str] | None = None) -> None:
    import joblib
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    args = parse(build_parser(), argv)
    started = time.time()
    x, y, features, classes = load(args.data_url, args.label_column)
    x_train, x_test, y_train, y_test = split(x, y, args.test_size, args.seed)
    say(f"{len(y)} rows, {len(features)} features, {len(classes)} classes; training {args.model}")
    if args.model == "random_forest":
        estimator = RandomForestClassifier(n_estimators=args.n_estimators, max_depth=args.max_depth or None,
                                           random_state=args.seed)
    elif args.model == "gradient_boosting":
        estimator = GradientBoostingClassifier(n_estimators=args.n_estimators, max_depth=args.max_depth or 3,
                                               random_state=args.seed)
    else:
        estimator = LogisticRegression(C=args.C, max_iter=args.max_iter, random_state=args.seed)
    model = make_pipeline(StandardScaler(), estimator).fit(x_train, y_train)
    metrics = classification_metrics(y_test, model.predict(x_test), len(classes))
    out = Path(args.train_url)
    out.mkdir(parents=True, exist_ok=True)
    joblib.dump({"model": model, "features": features, "classes": classes}, out / "model.joblib")
    write_metrics(out, "sklearn-classifier", args, metrics, rows_train=len(y_train), rows_test=len(y_test),
                  features=features, classes=classes, started=started, model_file="model.joblib")


if __name__ == "__main__":
    run(main)
