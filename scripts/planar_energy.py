"""Figure 3 of Rezende & Mohamed (2015): planar flows of length K fitted by
reverse KL to the four unnormalised 2-D densities exp(-U1..U4).

Each flow pushes N(0, I) through K planar maps and minimises E_q[log q + beta_t U]
(beta_t = min(1, 0.01 + t / anneal_steps), Adam). Reported: KL(q || p) =
E_q[log q + U] + log Z in nats (log Z by a fine grid integral, KL by 100,000
samples, with its standard error). The PNG panel has one row per energy: the
target density, then the fitted flows' densities q_K on the same grid
(evaluated exactly through the flows' numerical inverse), drawn with numpy +
pillow.

    python scripts/planar_energy.py --out planar_energy.png
"""

import argparse
import json
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from zoo_planar_vae.energies import ENERGIES, fit_planar, log_partition, reverse_kl  # noqa: E402

LIM = 4.0  # the paper's plotting window [-4, 4]^2
# viridis, sampled at 8 points; interpolated linearly
_VIRIDIS = np.array([[68, 1, 84], [70, 50, 126], [54, 92, 141], [39, 127, 142], [31, 161, 135],
                     [74, 193, 109], [160, 218, 57], [253, 231, 37]], np.float64)


def colorize(density: np.ndarray) -> np.ndarray:
    v = density / max(float(density.max()), 1e-300)
    pos = v * (len(_VIRIDIS) - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, len(_VIRIDIS) - 2)
    frac = (pos - lo)[..., None]
    return ((1 - frac) * _VIRIDIS[lo] + frac * _VIRIDIS[lo + 1]).astype(np.uint8)


def grid(n):
    axis = np.linspace(-LIM, LIM, n)
    z1, z2 = np.meshgrid(axis, axis[::-1], indexing="xy")  # image rows: z2 from top (+4) to bottom (-4)
    return jnp.asarray(np.stack([z1, z2], -1).reshape(-1, 2))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flow-lengths", type=int, nargs="+", default=[2, 8, 32])
    p.add_argument("--energies", nargs="+", default=list(ENERGIES))
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--anneal-steps", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pixels", type=int, default=160, help="size of each panel")
    p.add_argument("--out", default="planar_energy.png")
    p.add_argument("--json", default=None, help="also write the KL table here")
    args = p.parse_args()

    pts = grid(args.pixels)
    cells, results = {}, {}
    for name in args.energies:
        energy = ENERGIES[name]
        log_z = log_partition(energy)
        neg_u = np.asarray(jax.jit(jax.vmap(lambda z: -energy(z)))(pts))
        cells[(name, "target")] = np.exp(neg_u - neg_u.max()).reshape(args.pixels, args.pixels)
        results[name] = {"log_Z": log_z}
        for k in args.flow_lengths:
            t0 = time.perf_counter()
            model, losses = fit_planar(energy, k, key=jax.random.key(args.seed), steps=args.steps, batch=args.batch,
                                       lr=args.lr, anneal_steps=args.anneal_steps)
            kl, se = reverse_kl(model, energy, log_z, key=jax.random.key(args.seed + 1))
            log_q = np.asarray(jax.jit(jax.vmap(model.log_prob))(pts))
            cells[(name, k)] = np.exp(log_q - log_q.max()).reshape(args.pixels, args.pixels)
            results[name][f"K={k}"] = {"kl": kl, "kl_se": se, "seconds": time.perf_counter() - t0}
            print(f"{name} K={k:2d}: KL(q||p) = {kl:.3f} +- {se:.3f} nats  (final loss {losses[-500:].mean():.3f}, "
                  f"{time.perf_counter() - t0:.0f} s)", flush=True)

    # the panel: rows = energies, columns = target then each K
    cols = ["target"] + list(args.flow_lengths)
    pad, head, side, n = 6, 22, 34, args.pixels
    img = Image.new("RGB", (side + len(cols) * (n + pad) + pad, head + len(args.energies) * (n + pad + 14) + pad),
                    "white")
    draw = ImageDraw.Draw(img)
    for j, c in enumerate(cols):
        draw.text((side + pad + j * (n + pad) + n // 2 - 20, 6), "exp(-U)" if c == "target" else f"K = {c}", fill="black")
    for i, name in enumerate(args.energies):
        y0 = head + i * (n + pad + 14)
        draw.text((6, y0 + n // 2 - 6), name, fill="black")
        for j, c in enumerate(cols):
            x0 = side + pad + j * (n + pad)
            img.paste(Image.fromarray(colorize(cells[(name, c)])), (x0, y0))
            if c != "target":
                draw.text((x0 + 4, y0 + n + 2), f"KL {results[name][f'K={c}']['kl']:.2f}", fill="black")
    img.save(args.out)
    print(f"wrote {args.out}")

    print("\n| energy | " + " | ".join(f"KL, K = {k}" for k in args.flow_lengths) + " |")
    print("|---|" + "---:|" * len(args.flow_lengths))
    for name in args.energies:
        print(f"| {name} | " + " | ".join(f"{results[name][f'K={k}']['kl']:.3f} ± {results[name][f'K={k}']['kl_se']:.3f}"
                                         for k in args.flow_lengths) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
