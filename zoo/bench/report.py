"""bench.json -> Markdown: the ratios first (they carry over between machines),
then absolute milliseconds, with the machine and its load named."""

__all__ = ["markdown", "fmt_ms", "fmt_ratio"]


def fmt_ms(v: float) -> str:
    """Three significant figures, no exponent."""
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def fmt_ratio(v: float) -> str:
    return f"{v:.2f}"


def _spread(t: dict) -> str:
    """median [q1–q3]"""
    return f"{fmt_ms(t['median_ms'])} [{fmt_ms(t['q1_ms'])}–{fmt_ms(t['q3_ms'])}]"


def _rate(t: dict, batch: int) -> str:
    return f"{fmt_ms(t['median_ms'])} ({batch * 1e3 / t['median_ms']:,.0f}/s)"


def _compile(t: dict) -> str:
    """CPU seconds of compiling the step (older runs: the warm-up's extra wall seconds,
    with the number of programs when it compiled more than once)."""
    if "compile_cpu_s" in t:
        return f"{t['compile_cpu_s']:.1f}"
    n = t.get("compiles")
    return f"{t['compile_s']:.1f}" + (f" ({n} programs)" if n and n > 1 else "")


def _load(case: dict) -> str:
    a, b = case.get("load_before"), case.get("load_after")
    return "" if a is None or b is None else f"{a:.1f}→{b:.1f}"


def _shape(case: dict) -> str:
    return "×".join(map(str, case["input_shape"])) + f", {case['batch']}"


def _ok(results: dict, kind: str) -> list:
    return [c for c in results["cases"] if c.get("kind") == kind and "error" not in c]


def _machine_line(results: dict) -> str:
    m = results["machine"]
    loads = [v for c in results["cases"] for v in (c.get("load_before"), c.get("load_after")) if v is not None]
    load = f"; 1-minute load average {min(loads):.1f}–{max(loads):.1f} during the run" if loads else ""
    backend = ", ".join(sorted({c["jax_backend"] for c in results["cases"] if "jax_backend" in c})) or "?"
    malloc = "on" if m.get("glibc_hugetlb_malloc") else "off"
    return (f"Machine: {m['cpu']}, {m['cores_usable']} of {m['cpu_count']} cores usable, jax {m['jax']} "
            f"({backend}), OPENBLAS_NUM_THREADS={m['OPENBLAS_NUM_THREADS']}, glibc hugetlb malloc {malloc}; "
            f"zoo {m.get('zoo_commit') or '?'}, {m['date']}{load}. "
            f"`{results['command']}` took {results['wall_s'] / 60:.1f} min.")


def _flowjax_ratios(results: dict) -> list:
    cases = _ok(results, "vector")
    if not cases:
        return []
    lines = ["**zoo / flowjax**: median time ratio, both in one process with their calls taken in turn "
             "(< 1: zoo is faster). Hand-written step: the same `jit((params, opt_state, x) -> ...)` with "
             "`eqx.partition`, `optax.adam` and `value_and_grad` of the mean NLL for both; own step: zoo's "
             "`make_train_step`, flowjax's `fit_to_data` step. zoo's flows without ActNorm, as flowjax's; flowjax's "
             "parameters include its base Normal's trainable loc and scale (2D).", ""]
    if any("flowjax_skipped" in c for c in cases):
        why = results.get("flowjax_skipped") or next(c["flowjax_skipped"] for c in cases if "flowjax_skipped" in c)
        return lines + [f"flowjax cases skipped: {why}.", ""]
    lines += ["| case | params zoo / flowjax | hand-written step | own training step | log_prob | sample |",
              "|---|---:|---:|---:|---:|---:|"]
    for c in cases:
        fj = c["flowjax"]
        cells = [fmt_ratio(fj["ratios"][w]) if w in fj["ratios"] else "n/a"
                 for w in ("hand_step", "train_step", "log_prob", "sample")]
        lines.append(f"| {c['name']} | {c['params']:,} / {fj['params']:,} | " + " | ".join(cells) + " |")
    notes = sorted({f"{w}: {why}" for c in cases for w, why in c["flowjax"]["unsupported"].items()})
    return lines + ([""] + [f"n/a = {n}." for n in notes] if notes else []) + [""]


def _compile_ratios(results: dict) -> list:
    cases = [c for c in results["cases"] if "compile_depth" in c and "error" not in c]
    if not cases:
        return []
    lines = ["**Compile time against depth**: CPU seconds of trace + lower + compile of the trainer's step, "
             "N rounds of one compile at each depth taken back to back: the best time of each depth, and the median "
             "of the rounds' deep / shallow (about 1: does not grow with depth).", "",
             "| case | depth field | shallow → deep | N | compile CPU s | deep / shallow |",
             "|---|---|---:|---:|---:|---:|"]
    for c in cases:
        d = c["compile_depth"]
        n = d.get("repeats", results["settings"]["compile_repeats"])
        lines.append(f"| {c['name']} | `{d['field']}` | {d['shallow']} → {d['deep']} | {n} | "
                     f"{d['shallow_s']:.2f} → {d['deep_s']:.2f} | {fmt_ratio(d['ratio'])} |")
    return lines + [""]


def _timescaling(results: dict) -> list:
    lines = []
    for c in _ok(results, "timescaling"):
        snf, exact = c["pair"]
        lines += [f"**Self-normalized / exact FC step** ({c['name']}: preset {c['preset']}, {c['layers']} "
                  f"D × D layer, batch {c['batch']}, the trainer's steps taken in turn):", "",
                  f"| case | D | {snf} ms | {exact} ms | {snf} / {exact} |", "|---|---:|---:|---:|---:|"]
        for r in c["rows"]:
            lines.append(f"| {c['name']} | {r['D']} | {_spread(r['timings'][snf])} | {_spread(r['timings'][exact])} | "
                         f"{r['ratio']:.3f} |")
        lines.append("")
    return lines


def _pipeline(results: dict) -> list:
    cases = _ok(results, "pipeline")
    if not cases:
        return []
    lines = ["**Input pipeline** (`zoo.data.pipeline`) against the training step it feeds; on demand = "
             "`prefetch=0`, the cost of building a batch:", "",
             "| case | data → model (preset) | batch ms on demand | prefetched | train step ms | step / batch |",
             "|---|---|---:|---:|---:|---:|"]
    for c in cases:
        t = c["timings"]
        lines.append(f"| {c['name']} | {c['data']} → {c['model']} ({c['preset']}), batch {c['batch']} | "
                     f"{_spread(t['batch_on_demand'])} | {_spread(t['batch_prefetched'])} | "
                     f"{_spread(t['train_step'])} | {c['ratios']['step_per_batch']:,.0f} |")
    return lines + [""]


def _absolute(results: dict) -> list:
    m = results["machine"]
    lines = [f"**Absolute times** on {m['cpu']} ({m['cores_usable']} cores): median ms [quartiles]; log_prob "
             "and sample of one batch, in examples per second; compile s = CPU seconds of lowering and compiling the "
             "trainer's step, ahead of time (the timed calls then run that executable: its outputs feed back in "
             "without a second compile).", "",
             "| case | model | input, batch | params | train step ms | log_prob ms | sample ms | compile s | "
             "peak MB | load |", "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for c in _ok(results, "model") + _ok(results, "vector"):
        t = c["timings"]
        lines.append(f"| {c['name']} | {c['model']} | {_shape(c)} | {c['params']:,} | {_spread(t['train_step'])} | "
                     f"{_rate(t['log_prob'], c['batch'])} | {_rate(t['sample'], c['batch'])} | "
                     f"{_compile(t['train_step'])} | {c['peak_rss_mb']:,.0f} | {_load(c)} |")
    lines.append("")
    vector = [c for c in _ok(results, "vector") if "flowjax" in c]
    if vector:
        lines += ["flowjax, same process (median ms):", "",
                  "| case | hand-written step zoo / flowjax | own step zoo / flowjax | log_prob zoo / flowjax | "
                  "sample zoo / flowjax |", "|---|---:|---:|---:|---:|"]
        for c in vector:
            cells = []
            for w in ("hand_step", "train_step", "log_prob", "sample"):
                fj = c["flowjax"]["timings"].get(w)
                cells.append(f"{fmt_ms(c['timings'][w]['median_ms'])} / "
                             + (fmt_ms(fj["median_ms"]) if fj else "n/a"))
            lines.append(f"| {c['name']} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _failed(results: dict) -> list:
    failed = [c for c in results["cases"] if "error" in c]
    return ["**Failed cases**:", ""] + [f"- {c['name']}: {c['error']}" for c in failed] + [""] if failed else []


def markdown(results: dict) -> str:
    lines = [_machine_line(results), ""]
    for part in (_flowjax_ratios, _compile_ratios, _timescaling, _pipeline, _absolute, _failed):
        lines += part(results)
    return "\n".join(lines).rstrip() + "\n"
