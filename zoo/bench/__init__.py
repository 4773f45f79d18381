"""`python -m zoo.bench`: the one benchmark command (see `zoo.bench.command`).

Cases (`zoo.bench.cases`) time the trainer's step, `log_prob` and `sample` of
every registered family at the presets' sizes, compile time against depth,
the self-normalized / exact FC time scaling, the input pipeline, and zoo's
vector flows side by side with flowjax's when flowjax is installed. Each case
runs in its own interpreter; `zoo.bench.stats` holds the summaries,
`zoo.bench.report` the Markdown.
"""
