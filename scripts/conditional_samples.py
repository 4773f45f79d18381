"""How often a class-conditional image model's samples of class c look like a c.

    python scripts/conditional_samples.py --checkpoint runs/glow-cond [--per-class 100]
        [--temperature T] [--out docs/glow_conditional_samples.png] [--json out.json]

A ridge-regression classifier on pixels, fitted to the bundled MNIST's
training split (its accuracy on the bundled test split is printed: the
yardstick), labels `--per-class` samples of every class; the script prints,
per class, the fraction labelled as the class they were drawn for (chance:
1 / classes), and writes a PNG with one row of samples per class.
"""

import argparse
import json
import sys

import numpy as np


def fit_classifier(x: np.ndarray, y: np.ndarray, classes: int, ridge: float = 100.0) -> np.ndarray:
    """Weights W (D + 1, classes) of least squares onto one-hot labels, with a ridge penalty."""
    a = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    targets = np.eye(classes)[y]
    return np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ targets)


def classify(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.argmax(np.concatenate([x, np.ones((len(x), 1))], axis=1) @ w, axis=1)


def _pixels(images) -> np.ndarray:
    return np.clip(np.nan_to_num(np.asarray(images, np.float64), nan=0.5), 0, 1).reshape(len(images), -1)


def main(argv=None):
    import jax

    import zoo
    from zoo.checkpoint import load_with_meta
    from zoo.data import load_labels
    from zoo.images import save_grid
    from zoo.sample import checkpoint_temperature, sample

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--temperature", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out")
    p.add_argument("--row", type=int, default=10, help="samples per class in the PNG")
    p.add_argument("--json")
    args = p.parse_args(argv)

    model, meta = load_with_meta(args.checkpoint)
    classes = model.condition_shape[0]
    data = "mnist_bundled"
    x_train = _pixels(zoo.load_dataset(data, split="train") / 255.0)
    w = fit_classifier(x_train, load_labels(data, split="train"), classes)
    x_test = _pixels(zoo.load_dataset(data, split="test") / 255.0)
    real = float(np.mean(classify(w, x_test) == load_labels(data, split="test")))
    t = checkpoint_temperature(meta) if args.temperature is None else args.temperature
    labels = np.repeat(np.arange(classes), args.per_class)
    xs = sample(model, jax.random.key(args.seed), num=len(labels), temperature=t, condition=labels)
    predicted = classify(w, _pixels(xs))
    per_class = [float(np.mean(predicted[labels == c] == c)) for c in range(classes)]
    # row c: how the samples drawn for class c were labelled
    confusion = [np.bincount(predicted[labels == c], minlength=classes).tolist() for c in range(classes)]
    modal = [int(np.argmax(row)) for row in confusion]
    result = {"checkpoint": args.checkpoint, "temperature": t, "per_class": args.per_class,
              "classifier_test_accuracy": real, "agreement": float(np.mean(predicted == labels)),
              "agreement_per_class": per_class, "chance": 1 / classes,
              "confusion": confusion, "most_common_label": modal}
    print(f"classifier (ridge on pixels, fitted to {data} train): {real:.1%} on its test split")
    print(f"samples at temperature {t:g} labelled as the class drawn: {result['agreement']:.1%} "
          f"(chance {1 / classes:.0%}); per class: " + " ".join(f"{c}:{a:.0%}" for c, a in enumerate(per_class)))
    print(f"the most common label of the samples of each class: {modal} "
          f"({sum(m == c for c, m in enumerate(modal))} of {classes} are the class drawn)")
    if args.out:
        rows = np.concatenate([xs[labels == c][: args.row] for c in range(classes)])
        save_grid(rows, args.out, ncol=args.row)
        print(f"wrote {args.out}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
