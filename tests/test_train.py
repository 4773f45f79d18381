"""The shared trainer's CLI and loop on a toy dataset."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from zoo._cli import UsageError
from zoo.train.cli import parse


def _run(*args, env=None, timeout=600):
    full_env = {**os.environ, "WANDB_MODE": "disabled", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "zoo.train", *args], capture_output=True, text=True, env=full_env, timeout=timeout
    )


def test_unknown_model_exits_2_with_choices():
    r = _run("--model", "no_such_flow")
    assert r.returncode == 2
    assert "no_such_flow" in r.stderr and "realnvp" in r.stderr and "maf" in r.stderr


def test_unknown_model_field_is_a_usage_error():
    with pytest.raises(UsageError, match="--model-cfg.no-such-field"):
        parse(["--model", "realnvp", "--model-cfg.no-such-field", "3"])


def test_parse_model_fields_and_training_flags():
    model, model_cfg, data, cfg = parse(
        ["--model", "nsf", "--data", "circles", "--steps", "7", "--lr", "0.01", "--model-cfg.num-bins", "5"]
    )
    assert (model, data, cfg.steps, cfg.lr) == ("nsf", "circles", 7, 0.01)
    assert model_cfg.num_bins == 5


def test_help_lists_models_datasets_and_model_fields():
    r = _run("--model", "glow", "--help")
    assert r.returncode == 0
    for word in ("realnvp", "nsf", "moons", "--model-cfg.levels", "--steps", "--batch-size",
                 "Preset: a name from configs/", "Registered model to train", "glow takes binarized_mnist"):
        assert word in r.stdout, word
    assert " ".join(r.stdout.split("--data {")[1].split()).count("(default: mnist_bundled)") == 1  # glow's own


def test_short_run_improves_nll_and_writes_outputs(tmp_path):
    from zoo.train.loop import train

    model, model_cfg, data, cfg = parse(
        ["--model", "realnvp", "--data", "moons", "--steps", "400", "--eval-every", "0", "--sample-every", "200",
         "--out-dir", str(tmp_path), "--no-progress"]
    )
    out = train(model, model_cfg, data, cfg)
    first, final = out["history"]["first_eval"]["test"]["nll"], out["history"]["final_eval"]["test"]["nll"]
    assert final < first - 0.5, (first, final)
    run = tmp_path / "realnvp-moons"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in records} >= {"validation", "test", "train_batch", "summary"}
    assert json.loads((run / "config.json").read_text())["model"] == "realnvp"
    assert (run / "samples_200.png").is_file() and not (run / "samples_400.png").exists()
    img = np.asarray(Image.open(run / "samples.png"))
    assert img.ndim == 2 and img.min() < 128  # some dark (dense) pixels


def test_missing_dataset_exits_nonzero_with_download_command(tmp_path):
    r = _run("--model", "glow", "--data", "mnist", "--data-dir", str(tmp_path), "--steps", "1")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert "mnist" in r.stderr and "scripts/download_data.py mnist --data-dir" in r.stderr


def test_wandb_offline_logs_scalars_and_sample_grid(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    r = subprocess.run(
        [sys.executable, "-m", "zoo.train", "--model", "realnvp", "--data", "moons", "--steps", "20",
         "--eval-every", "10", "--log-interval", "5", "--out-dir", str(tmp_path), "--no-progress",
         "--wandb.project", "zoo-test", "--wandb.mode", "offline"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert r.returncode == 0, r.stderr
    runs = list((tmp_path / "realnvp-moons" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    records = next(runs[0].glob("run-*.wandb")).read_bytes()
    for key in (b"train/loss", b"validation/nll", b"test/nll", b"train/steps_per_sec"):
        assert key in records, key
    assert list(runs[0].glob("files/media/images/samples_*.png"))


def test_preset_values_are_defaults_that_flags_override(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text('model = "nsf"\ndata = "circles"\n[model_cfg]\nnum_bins = 6\n[train]\nlr = 0.003\nsteps = 9\n')
    model, model_cfg, data, cfg = parse(["--config", str(preset), "--steps", "4"])
    assert (model, data, model_cfg.num_bins, cfg.lr, cfg.steps) == ("nsf", "circles", 6, 0.003, 4)
    preset.write_text('model = "nsf"\n[train]\nno_such_option = 1\n')
    with pytest.raises(SystemExit) as e:
        parse(["--config", str(preset)])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        parse(["--config", "no_such_preset"])
    assert e.value.code == 2


@pytest.mark.parametrize("dim", [8, 1024])  # 1024^2 weights: the lax.cond path; 8: the fused select
def test_nonfinite_step_is_skipped_whole_on_both_skip_paths(dim):
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from zoo.bijections import Chain
    from zoo.distributions import StandardNormal
    from zoo.flow import Flow
    from zoo.train import TrainConfig
    from zoo.train.loop import global_batch, init_opt_state, make_mesh, make_optimizer, make_train_step
    from zoo_selfnorm.layers import Dense

    model = Flow(Chain([Dense((dim,), key=jax.random.key(0))]), StandardNormal((dim,)))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt = make_optimizer(TrainConfig(lr=1e-2, batch_size=4), steps_per_epoch=1, total_steps=1)
    mesh = make_mesh(jax.devices()[:1])
    step = make_train_step(static, opt, mesh)
    state = init_opt_state(opt, params)
    mask = global_batch(mesh, np.ones(4, bool))
    x = np.random.default_rng(0).standard_normal((4, dim)).astype(np.float32)
    before = jax.tree.map(np.asarray, (params, state))
    bad = x.copy()
    bad[1, 0] = np.nan
    params, state, m = step(params, state, global_batch(mesh, bad), mask, jax.random.key(0), jnp.int32(0))
    assert int(m["nonfinite"]) == 1
    for a, b in zip(jax.tree.leaves(before[0]), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)  # nothing moved, Adam moments included below
    for a, b in zip(jax.tree.leaves(before[1].inner), jax.tree.leaves(state.inner)):
        np.testing.assert_array_equal(a, b)
    params, state, m = step(params, state, global_batch(mesh, x), mask, jax.random.key(0), jnp.int32(1))
    assert int(m["nonfinite"]) == 0 and np.isfinite(float(m["grad_norm"]))
    assert not np.array_equal(before[0].bijection.layers[0].weight, params.bijection.layers[0].weight)


def _main_error(capsys, *argv):
    """Run the CLI in-process; (exit status, stderr)."""
    from zoo.train.cli import main

    with pytest.raises(SystemExit) as e:
        main(list(argv))
    return e.value.code, capsys.readouterr().err


def test_a_model_alone_trains_on_its_own_dataset():
    assert parse(["--model", "glow"])[2] == "mnist_bundled"
    assert parse(["--model", "nsf"])[2] == "moons"
    assert parse(["--data", "cifar10"])[0] == "glow" and parse(["--data", "circles"])[0] == "realnvp"
    assert parse(["--config", "glow_mnist_small", "--model", "selfnorm_glow"])[2] == "mnist_bundled"  # the preset's


@pytest.mark.parametrize("argv, fits, not_fits", [
    (["--model", "realnvp", "--data", "mnist_bundled"], ["moons", "circles", "8gaussians"], ["mnist"]),
    (["--model", "glow", "--data", "moons"], ["mnist_bundled", "mnist", "cifar10"], ["circles"]),
    (["--config", "quickstart", "--model", "nsf"], ["moons"], ["cifar10"]),  # the preset's data, another model
])
def test_model_data_mismatch_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, argv, fits, not_fits):
    code, err = _main_error(capsys, *argv, "--steps", "1", "--out-dir", str(tmp_path / "runs"))
    assert code == 2 and err.count("\n") == 1 and err.startswith("zoo.train: error: "), err
    listed = err.split("datasets that fit")[1]
    assert all(d in listed for d in fits) and not any(d in listed.split(";")[0] for d in not_fits), err
    assert not (tmp_path / "runs").exists()


def test_an_architecture_that_does_not_fit_the_data_fails_before_a_run(tmp_path, capsys):
    code, err = _main_error(capsys, "--model", "glow", "--data", "mnist_bundled", "--model-cfg.levels", "3",
                            "--out-dir", str(tmp_path / "runs"))
    assert code == 2 and "3 levels squeeze H and W by 8" in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("flag, typo, meant", [("--model", "glwo", "glow"), ("--data", "moosn", "moons"),
                                               ("--config", "quickstrat", "quickstart")])
def test_mistyped_names_get_a_did_you_mean(capsys, flag, typo, meant):
    code, err = _main_error(capsys, flag, typo)
    assert code == 2 and f"{typo!r}" in err and f"id you mean {meant!r}" in err, err


def test_make_train_step_from_user_code_compiles_once_and_keeps_the_users_arrays():
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax

    import zoo
    from zoo.train.loop import init_opt_state, make_mesh, make_train_step

    model = type(zoo.get_model_config("realnvp"))(num_layers=2, width=8).build(input_shape=(2,), key=jax.random.key(0))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    optimizer = optax.adam(1e-2)
    step = make_train_step(static, optimizer, make_mesh())
    opt_state = init_opt_state(optimizer, params)  # left where jax put it, not on the mesh
    x, mask = np.random.default_rng(0).standard_normal((8, 2)).astype(np.float32), np.ones(8, bool)
    before = [np.asarray(a).copy() for a in jax.tree.leaves(params)]
    p, s = params, opt_state
    for i in range(1, 4):
        p, s, metrics = step(p, s, x, mask, jax.random.key(i), jnp.asarray(i, jnp.int32))
    step(params, opt_state, x, mask, jax.random.key(5), jnp.asarray(5, jnp.int32))  # unplaced again, not the last output
    assert step.jitted._cache_size() == 1  # the unplaced calls and the placed ones in between share one compile
    # not donated: the user's model is intact and unchanged, the trained one differs
    for a, b in zip(jax.tree.leaves(params), before):
        np.testing.assert_array_equal(np.asarray(a), b)
    assert any(not np.array_equal(np.asarray(a), b) for a, b in zip(jax.tree.leaves(p), before))
    # the trainer's donating step consumes its inputs (why it is opt-in)
    donating = make_train_step(static, optimizer, make_mesh(), donate=True)
    donating(p, s, x, mask, jax.random.key(9), jnp.asarray(9, jnp.int32))  # p is on the mesh already: no copy
    assert jax.tree.leaves(p)[0].is_deleted()
