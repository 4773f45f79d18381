"""`python -m zoo.bench`: the quick run's JSON and Markdown, and the statistics
helpers on hand-made numbers. No timed assertions: only that every number is
there and finite."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

from zoo.bench import stats
from zoo.bench.cases import CASES, QUICK_CASES


def _medians(tree, path=""):
    """(path, median) of every timing summary in a case's result."""
    if isinstance(tree, dict):
        if "median_ms" in tree:
            yield path, tree["median_ms"]
        for k, v in tree.items():
            yield from _medians(v, f"{path}.{k}")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _medians(v, f"{path}[{i}]")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "zoo.bench", "--quick", "--out", str(out / "bench.json"),
                           "--markdown", str(out / "bench.md")], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "bench.json").read_text()), (out / "bench.md").read_text(), proc


def test_quick_json_structure(quick):
    results, _, _ = quick
    assert {"command", "settings", "machine", "cases", "wall_s"} <= set(results)
    machine = results["machine"]
    assert machine["cpu"] and machine["cores_usable"] >= 1 and machine["jax"]
    assert machine["OPENBLAS_NUM_THREADS"] == "1"
    assert results["settings"]["quick"] is True
    assert [c["name"] for c in results["cases"]] == list(QUICK_CASES)
    assert {c["kind"] for c in results["cases"]} == {"model", "vector", "timescaling", "pipeline"}
    for case in results["cases"]:
        assert "error" not in case, case
        assert case["peak_rss_mb"] > 0 and case["wall_s"] > 0 and case["jax_backend"]
        assert all(isinstance(case[k], float) for k in ("load_before", "load_after"))
        if case["kind"] in ("model", "vector"):
            assert {"train_step", "log_prob", "sample"} <= set(case["timings"])
            assert case["params"] > 0
            depth = case["compile_depth"]
            # the ratio is the median of paired rounds (one round in --quick), the seconds each depth's best
            assert len(depth["rounds"]) == depth["repeats"] == 1
            (shallow, deep), = depth["rounds"]
            assert depth["ratio"] == deep / shallow and (depth["shallow_s"], depth["deep_s"]) == (shallow, deep)
        medians = list(_medians(case))
        assert medians, case["name"]
        for path, median in medians:
            assert math.isfinite(median) and median > 0, (case["name"], path)
    scaling = next(c for c in results["cases"] if c["kind"] == "timescaling")
    assert all(math.isfinite(r["ratio"]) for r in scaling["rows"])
    pipe = next(c for c in results["cases"] if c["kind"] == "pipeline")
    assert all(math.isfinite(v) for v in pipe["ratios"].values())


def test_quick_flowjax_side_by_side_or_one_line_why_not(quick):
    results, text, proc = quick
    vector = next(c for c in results["cases"] if c["kind"] == "vector")
    if importlib.util.find_spec("flowjax") is None:
        assert "flowjax is not importable" in vector["flowjax_skipped"]
        lines = [ln for ln in proc.stderr.splitlines() if "flowjax is not importable" in ln]
        assert len(lines) == 1 and lines[0].startswith("zoo.bench: ")
        assert "flowjax cases skipped" in text
    else:
        fj = vector["flowjax"]
        assert fj["params"] > 0
        assert all(math.isfinite(r) for r in fj["ratios"].values())
        assert {"hand_step", "train_step", "log_prob"} <= set(fj["ratios"])


def test_quick_markdown_lists_every_case(quick):
    results, text, proc = quick
    for case in results["cases"]:
        assert f"| {case['name']} |" in text, case["name"]
    assert results["machine"]["cpu"] in text
    assert text.index("Compile time against depth") < text.index("Absolute times")  # ratios first
    assert proc.stdout == text  # the tables are also printed


def test_readme_section_rendered_from_a_run_between_its_markers(quick, tmp_path, capsys):
    from zoo.bench.command import README_BEGIN, README_END, main

    results, text, _ = quick
    (tmp_path / "bench.json").write_text(json.dumps(results))
    readme = tmp_path / "README.md"
    readme.write_text(f"# zoo\n\n## Benchmarks\n\nintro\n{README_BEGIN}\nold table\n{README_END}\n\n## Layout\n")
    assert main(["--from", str(tmp_path / "bench.json"), "--readme", str(readme)]) == 0
    new = readme.read_text()
    assert new.startswith("# zoo\n\n## Benchmarks\n\nintro\n" + README_BEGIN + "\n\n")
    assert new.endswith(f"\n\n{README_END}\n\n## Layout\n") and "old table" not in new
    assert text.strip() in new  # the same tables the run printed
    assert capsys.readouterr().out == text
    assert main(["--from", str(tmp_path / "bench.json"), "--readme", str(readme)]) == 0
    assert readme.read_text() == new  # rendering again changes nothing


@pytest.mark.parametrize("content, message", [
    ("# no markers\n", "has no <!-- zoo.bench tables: begin --> ... <!-- zoo.bench tables: end --> lines"),
    (None, "not a bench.json"),
])
def test_readme_and_from_mistakes_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, content, message):
    from zoo.bench.command import main

    readme, source = tmp_path / "README.md", tmp_path / "bench.json"
    readme.write_text(content or "<!-- zoo.bench tables: begin -->\n<!-- zoo.bench tables: end -->\n")
    source.write_text(json.dumps({"cases": [], "machine": {}}) if content else "{not json")
    before = readme.read_text()
    with pytest.raises(SystemExit) as e:
        main(["--from", str(source), "--readme", str(readme)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("zoo.bench: error: ") and message in err[0], err
    assert readme.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "bench.json"]


def test_unknown_case_pattern_is_one_line_exit_2(capsys):
    from zoo.bench.command import main

    with pytest.raises(SystemExit) as e:
        main(["--cases", "no_such_case*"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["zoo.bench: error: --cases 'no_such_case*' matches no case; see python -m zoo.bench --list"]


def test_every_quick_case_is_a_case():
    assert set(QUICK_CASES) <= set(CASES)


# --------------------------------------------------------------------------- statistics helpers


def test_quantile_interpolates_linearly_like_numpy():
    xs = [4.0, 1.0, 3.0, 2.0]
    assert stats.quantile(xs, 0.0) == 1.0
    assert stats.quantile(xs, 1.0) == 4.0
    assert stats.quantile(xs, 0.5) == 2.5
    assert stats.quantile(xs, 0.25) == pytest.approx(1.75)
    assert stats.quantile(xs, 0.75) == pytest.approx(3.25)
    assert stats.quantile([7.0], 0.3) == 7.0
    with pytest.raises(ValueError):
        stats.quantile([], 0.5)
    with pytest.raises(ValueError):
        stats.quantile(xs, 1.5)


def test_summarize_in_milliseconds():
    s = stats.summarize([0.003, 0.001, 0.010, 0.002, 0.004])
    assert s["n"] == 5
    assert s["median_ms"] == pytest.approx(3.0)
    assert s["q1_ms"] == pytest.approx(2.0)
    assert s["q3_ms"] == pytest.approx(4.0)
    assert s["iqr_ms"] == pytest.approx(2.0)
    assert (s["min_ms"], s["max_ms"]) == (pytest.approx(1.0), pytest.approx(10.0))
    assert stats.ratio(s, stats.summarize([0.006])) == pytest.approx(0.5)


def test_interleaved_alternates_and_counts():
    calls = []
    times = stats.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, steps=3)
    assert calls == ["a", "b"] * 3
    assert [len(t) for t in times.values()] == [3, 3]
    n = len(stats.time_calls(lambda: None, steps=2, min_seconds=0.01, max_steps=10**6))
    assert n >= 2


def test_warm_up_calls_until_nothing_new_compiles():
    calls = []

    def fn():
        calls.append(1)

    # a step that compiles on each of its first three calls (as a weakly typed parameter can make it)
    seconds, n = stats.warm_up(fn, lambda: min(len(calls), 3))
    assert (n, len(calls)) == (4, 4) and seconds >= 0
    calls.clear()
    assert stats.warm_up(fn)[1] == 2  # without a counter: the two calls


def test_compile_pairs_alternate_and_time_each_setting_once_per_round():
    import jax
    import numpy as np
    import optax

    from zoo.bench.measure import compile_pairs
    from zoo_classic.models import RealNVPConfig

    built = []

    def build(n):
        built.append(n)
        return RealNVPConfig(num_layers=n, width=4, depth=1, actnorm=False).build(input_shape=(2,), key=jax.random.key(0))

    rounds = compile_pairs(build, (1, 2), optax.adam(1e-3), np.zeros((4, 2), np.float32), pairs=2)
    assert sorted(built) == [1, 2]  # each model built once, compiled once per round
    assert [list(r) for r in rounds] == [[2, 1], [1, 2]]  # the deep one first, then the order alternates
    assert all(s > 0 for r in rounds for s in r.values())
