#!/usr/bin/env python
"""Publish a trained run as a pretrained entry: archive, evaluation, model card.

    python scripts/publish_pretrained.py runs/selfnorm_fc-mnist --name selfnorm_fc.mnist \\
        --command "python -m zoo.train --config selfnorm_fc_mnist --epochs 200" \\
        --paper-nll 947.1 --paper-source "Keller et al. 2021, Table 1"
    python scripts/publish_pretrained.py --archive pretrained/glow_mnist_bundled.tar.gz --name glow.mnist_bundled ...

Writes pretrained/<name>.tar.gz (the run's best-validation checkpoint) and
pretrained/<name>.json (the card: config, command, steps, wall time, machine,
the test NLL measured with zoo.evaluate's function, the paper's number,
sampling temperature, data licence, sha256). Register the entry by adding
`"<name>" = "zoo.pretrained:first_party"` under [project.entry-points."zoo.pretrained"]
in pyproject.toml (a plugin does the same with its own locator).
"""

import argparse
import json
import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="publish_pretrained.py", description=__doc__.split("\n\n")[0])
    p.add_argument("run", nargs="?", help="run directory (with checkpoints/ and metrics.jsonl)")
    p.add_argument("--archive", help="card an existing archive instead of a run")
    p.add_argument("--name", required=True, help="entry name, architecture.tag")
    p.add_argument("--command", required=True, help="the training command that produced it, runnable as written")
    p.add_argument("--out-dir", default="pretrained")
    p.add_argument("--step", type=int, default=None, help="the run's step (default: best validation)")
    p.add_argument("--paper-nll", type=float, default=None)
    p.add_argument("--paper-source", default=None)
    p.add_argument("--temperature", type=float, default=None,
                   help="recommended sampling temperature, stored in the archive (default: the run's)")
    p.add_argument("--num-importance", type=int, default=None)
    p.add_argument("--wall-time-s", type=float, default=None, help="with --archive: training seconds, if known")
    p.add_argument("--machine", default=None, help="with --archive: the machine it was trained on, if known")
    p.add_argument("--notes", default="")
    p.add_argument("--data-dir", default=None)
    a = p.parse_args(argv)
    if (a.run is None) == (a.archive is None):
        p.error("give a run directory or --archive, not both")
    from zoo.pretrained import publish, write_card

    paper = None if a.paper_nll is None else {"nll": a.paper_nll, "source": a.paper_source}
    fields = dict(command=a.command, paper=paper, data_dir=a.data_dir, num_importance=a.num_importance, notes=a.notes)
    if a.run:
        card = publish(a.run, a.name, out_dir=a.out_dir, step=a.step, sample_temperature=a.temperature, **fields)
    else:
        if a.temperature is not None:
            p.error("--temperature is stored in the archive a run is published to; an existing archive keeps its own")
        card = write_card(a.archive, a.name, wall_time_s=a.wall_time_s, machine_name=a.machine, **fields)
    print(json.dumps({k: card[k] for k in ("name", "steps", "epochs", "wall_time_s", "metrics", "sha256")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
