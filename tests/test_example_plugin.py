"""Install the example third-party plugin (examples/zoo-example-plugin) as a
real, separate distribution and use it from a fresh interpreter.

This test runs `pip install` (offline: --no-index --no-deps
--no-build-isolation, so it needs only the pip and setuptools of the dev
extra) into a temporary --target directory; the main environment is never
touched. A subprocess with that directory on PYTHONPATH then checks that zoo
discovers the plugin through its entry points alone, builds its model with
zoo.create_model, runs the conformance kit on it, and runs the plugin's own
test suite.
"""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PLUGIN_SRC = Path(__file__).resolve().parents[1] / "examples" / "zoo-example-plugin"


def _run(cmd, *, cwd, env=None, timeout=600):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(
            f"command failed with exit code {proc.returncode}: {' '.join(map(str, cmd))}\n"
            f"--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}",
            pytrace=False,
        )
    return proc


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    """(site_dir, source_copy): the plugin pip-installed into site_dir."""
    root = tmp_path_factory.mktemp("example_plugin")
    # Build from a copy: setuptools writes build/ and *.egg-info into the source tree.
    src = root / "src"
    shutil.copytree(PLUGIN_SRC, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = root / "site"
    env = {**os.environ, "PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    _run(
        [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-build-isolation",
         "--no-cache-dir", "--target", str(site), str(src)],
        cwd=root,
        env=env,
    )
    assert list(site.glob("zoo_example_plugin-0.1.0.dist-info/entry_points.txt")), sorted(os.listdir(site))
    return site, src


CHECK_SCRIPT = textwrap.dedent(
    """
    import sys, warnings
    from pathlib import Path

    import jax
    import jax.numpy as jnp
    import pytest
    import zoo

    site, plugin_tests = Path(sys.argv[1]), sys.argv[2]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        models, layers = zoo.list_models(), zoo.list_layers()
    assert "example_flow" in models, models
    assert "example_leaky_relu" in layers, layers
    bad = [str(w.message) for w in caught if "zoo-example-plugin" in str(w.message)]
    assert not bad, bad
    assert zoo.list_models("example_*") == ["example_flow"]
    assert zoo.registry.provider("model", "example_flow") == "zoo-example-plugin"
    assert zoo.registry.provider("layer", "example_leaky_relu") == "zoo-example-plugin"

    # zoo found the installed copy, not a source checkout.
    import zoo_example_plugin
    assert Path(zoo_example_plugin.__file__).resolve().is_relative_to(site.resolve()), zoo_example_plugin.__file__

    config = zoo.get_model_config("example_flow")
    assert type(config).__name__ == "ExampleFlowConfig" and config.num_blocks == 4
    model = zoo.create_model("example_flow", key=jax.random.key(0), input_shape=(2,), num_blocks=2, width=8)
    assert isinstance(model, zoo.Flow)
    zoo.testing.check_flow(model, jnp.array([0.4, -1.1]))

    layer = zoo.create_layer("example_leaky_relu", key=jax.random.key(1), shape=(3,), negative_slope=0.5)
    y, logdet = layer.forward(jnp.array([-2.0, 1.0, -4.0]))
    assert jnp.allclose(y, jnp.array([-1.0, 1.0, -2.0])), y
    assert jnp.allclose(logdet, 2 * jnp.log(0.5)), logdet
    print("CHECKS PASSED")

    # The plugin's own tests, against the installed distribution.
    code = pytest.main(["-q", "-p", "no:cacheprovider", plugin_tests])
    assert code == 0, f"plugin test suite failed (pytest exit code {code}; 5 means no tests ran)"

    # The plugin's model trains through the shared CLI, its fields as flags, and its
    # checkpoint is sampled without naming the architecture (each main() exits non-zero on a failure).
    from zoo.sample import main as sample_main
    from zoo.train.cli import main as train_main

    runs, grid = sys.argv[3], sys.argv[4]
    train_main(["--model", "example_flow", "--data", "moons", "--steps", "30", "--eval-every", "0",
                "--out-dir", runs, "--no-progress", "--model-cfg.num-blocks", "2"])
    sample_main(["--checkpoint", str(Path(runs) / "example_flow-moons" / "checkpoints"), "--num", "100",
                 "--out", grid])
    print("CLI PASSED")
    """
)


def test_separately_installed_plugin_is_discovered_and_works(installed_plugin, tmp_path):
    site, src = installed_plugin
    script = tmp_path / "check_installed_plugin.py"
    script.write_text(CHECK_SCRIPT)
    pythonpath = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath, "OPENBLAS_NUM_THREADS": "1", "JAX_PLATFORMS": "cpu",
           "WANDB_MODE": "disabled"}
    runs, grid = tmp_path / "runs", tmp_path / "grid.png"
    # cwd is neither the repo nor the plugin source, so only installed code is importable.
    proc = _run([sys.executable, str(script), str(site), str(src / "tests"), str(runs), str(grid)], cwd=tmp_path,
                env=env)
    assert "CHECKS PASSED" in proc.stdout and "CLI PASSED" in proc.stdout
    assert "example_flow on moons" in proc.stdout
    assert grid.stat().st_size > 0


def test_plugin_is_not_visible_without_installing():
    # Guards the test above: the plugin must come from the temporary install,
    # not from something already in this environment.
    import importlib.metadata

    names = {ep.name for ep in importlib.metadata.entry_points(group="zoo.models")}
    assert "example_flow" not in names
