"""Conditional training end to end: labelled datasets in the pipeline, `zoo.fit(condition=...)`,
`python -m zoo.train --conditional`, `zoo.sample --condition` and their errors."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
from zoo.data import load_labels, pipeline
from zoo.sample import sample
from zoo.testing import _grid_integral  # the check_flow grid integral

NSF = dict(num_layers=2, width=32, num_bins=8, tail_bound=4.0, condition_shape=(2,))


def test_labelled_datasets_yield_y_aligned_with_their_examples():
    x, y = zoo.load_dataset("moons", split="train"), load_labels("moons", split="train")
    assert y.dtype == np.int64 and set(np.unique(y)) == {0, 1} and len(y) == len(x)
    # moon 0 is the outer (upper) half circle, moon 1 the inner one
    assert x[y == 0, 1].mean() > 0.5 > x[y == 1, 1].mean()
    for data, split in (("moons", "validation"), ("mnist_bundled", "train")):
        pipe = pipeline(data, split=split, batch_size=50, seed=3, labels=True)
        b = next(iter(pipe))
        labels = load_labels(data, split=split)
        np.testing.assert_array_equal(b["y"], labels[b["index"]])
    assert np.bincount(load_labels("mnist_bundled", split="test")).tolist() == [50] * 10
    with pytest.raises(ValueError, match="no labels"):
        pipeline("circles", split="train", batch_size=10, labels=True)
    with pytest.raises(ValueError, match="one row per example"):
        pipeline(x, batch_size=10, labels=y[:5])


def test_conditional_nsf_by_fit_integrates_to_one_per_moon_and_tells_the_moons_apart():
    x, y = zoo.load_dataset("moons", split="train"), load_labels("moons", split="train")
    xv, yv = zoo.load_dataset("moons", split="validation"), load_labels("moons", split="validation")
    model = type(zoo.get_model_config("nsf"))(**NSF).build(input_shape=(2,), key=jax.random.key(0))
    best, history = zoo.fit(model, x, condition=y, x_val=xv, condition_val=yv, key=0, epochs=3, batch_size=100,
                            progress=False)
    assert history["validation_nll"][-1] < history["validation_nll"][0] - 0.5, history
    mass = [_grid_integral(best, (2,), jax.random.key(1), 200, condition=jnp.asarray(c)) for c in (0, 1)]
    np.testing.assert_allclose(mass, [1.0, 1.0], atol=0.03)
    right = jax.vmap(lambda a, c: best.log_prob(a, condition=c))(xv, yv)
    wrong = jax.vmap(lambda a, c: best.log_prob(a, condition=1 - c))(xv, yv)
    assert float(jnp.mean(right > wrong)) > 0.9  # the densities differ by condition
    # samples of moon c lie on moon c
    xs = sample(best, jax.random.key(2), num=400, condition=np.repeat([0, 1], 200))
    assert xs[:200, 1].mean() > 0.5 > xs[200:, 1].mean()


def _cli(*args, tmp_path):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=tmp_path, timeout=600)


def test_cli_trains_samples_and_evaluates_a_conditional_model(tmp_path, capsys, monkeypatch):
    # the commands that work run their main() in this process (a failure raises SystemExit);
    # the mistakes below run as commands: their exit status and one line of stderr are the point
    from zoo.evaluate import main as evaluate_main
    from zoo.sample import main as sample_main
    from zoo.train.cli import main as train_main

    monkeypatch.chdir(tmp_path)
    train_main(["--model", "nsf", "--data", "moons", "--conditional", "--steps", "30", "--batch-size", "100",
                "--eval-every", "0", "--no-progress", "--model-cfg.num-layers", "2", "--model-cfg.width", "16"])
    run = tmp_path / "runs" / "nsf-moons"
    model = zoo.load_pretrained(run)
    assert model.condition_shape == (2,)  # --conditional set it from the dataset's 2 classes
    capsys.readouterr()
    sample_main(["--checkpoint", str(run), "--condition", "1", "--num", "50", "--npy", "s.npy", "--out", "s.png"])
    assert "class 1" in capsys.readouterr().out
    assert np.load(tmp_path / "s.npy").shape == (50, 2) and (tmp_path / "s.png").is_file()
    assert evaluate_main(["--checkpoint", str(run), "--json", "--no-progress"]) == 0
    for bad, message in ((["--condition", "2"], "a class is an integer in [0, 2)"),
                         (["--condition", "0.5"], "a class is an integer"),
                         (["--condition", "1", "2", "3"], "one class in [0, 2) or the condition's 2 values")):
        r = _cli("zoo.sample", "--checkpoint", str(run), *bad, tmp_path=tmp_path)
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.parametrize("args, message", [
    (["--model", "nsf", "--data", "circles", "--conditional"], "circles has no labels to condition on"),
    (["--model", "selfnorm_fc", "--data", "mnist_bundled", "--conditional"], "selfnorm_fc has no conditional version"),
    (["--model", "nsf", "--data", "moons", "--model-cfg.condition-shape", "2"], "add --conditional"),
    (["--model", "nsf", "--data", "moons", "--conditional", "--model-cfg.condition-shape", "3"],
     "does not fit moons's 2 classes"),
])
def test_conditional_cli_mistakes_are_one_line_and_write_nothing(tmp_path, args, message):
    r = _cli("zoo.train", *args, "--steps", "1", tmp_path=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "runs").exists()
