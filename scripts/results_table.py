#!/usr/bin/env python
"""The README's "Results on MNIST" table, from the registered pretrained cards.

    python scripts/results_table.py            # Markdown table and the papers' claims, checked

Every number comes from a card (measured by `zoo.evaluate` when the entry
was published); the papers' numbers are the cards' `paper` field.
"""

import sys

import zoo

# (model, twin it is compared with, largest relative gap the paper's claim allows)
CLAIMS = [("selfnorm_fc.mnist", "exact_fc.mnist", 0.01), ("selfnorm_cnn.mnist", "exact_cnn.mnist", 0.01),
          ("emerging_cnn.mnist", "exact_cnn.mnist", 0.02), ("exponential_cnn.mnist", "exact_cnn.mnist", 0.02)]
ORDER = ["exact_fc.mnist", "selfnorm_fc.mnist", "exact_cnn.mnist", "selfnorm_cnn.mnist", "emerging_cnn.mnist",
         "exponential_cnn.mnist", "glow.mnist", "planar_vae.k0_binarized_mnist", "planar_vae.k10_binarized_mnist"]


def _training(card) -> str:
    return f"{card['epochs']:g} epochs ({card['steps']:,} steps), {card['wall_time_s'] / 60:.0f} min" \
        if card["wall_time_s"] else f"{card['epochs']:g} epochs ({card['steps']:,} steps)"


def table(cards: dict) -> str:
    rows = ["| model | data | parameters | trained | zoo test NLL ± s.e. (nats) | paper (nats) | pretrained |",
            "|---|---|---:|---|---:|---:|---|"]
    for name in [n for n in ORDER if n in cards] + sorted(set(cards) - set(ORDER)):
        c = cards[name]
        m = c["metrics"]
        extra = f", S = {m['num_importance']}" if "num_importance" in m else ""
        paper = f"{c['paper']['nll']:g}" if c.get("paper") else "—"
        rows.append(f"| {c['model']}{' K=' + str(c['model_cfg']['flow_length']) if 'flow_length' in c['model_cfg'] else ''} "
                    f"| {c['data']} | {c['parameters']:,} | {_training(c)} | {m['nll']:.1f} ± {m['nll_se']:.1f}{extra} | {paper} | `{name}` |")
    return "\n".join(rows)


def claims(cards: dict) -> list[str]:
    out = []
    for a, b, limit in CLAIMS:
        if a in cards and b in cards:
            gap = cards[a]["metrics"]["nll"] / cards[b]["metrics"]["nll"] - 1
            verdict = "holds" if abs(gap) <= limit else "does NOT hold"
            out.append(f"- {a} vs {b}: {gap:+.2%} (claim: within {limit:.0%}) — {verdict}")
        else:
            out.append(f"- {a} vs {b}: not measured yet ({', '.join(n for n in (a, b) if n not in cards)} not trained)")
    k0, k10 = cards.get("planar_vae.k0_binarized_mnist"), cards.get("planar_vae.k10_binarized_mnist")
    if k0 and k10:
        d = k10["metrics"]["nll"] - k0["metrics"]["nll"]
        out.append(f"- planar VAE −log p(x) from K=0 to K=10: {d:+.2f} nats (claim: decreasing) — "
                   + ("holds" if d < 0 else "does NOT hold"))
    return out


def main() -> int:
    # full MNIST (8-bit) and its dynamically binarized version; not the bundled 4k subset
    names = zoo.list_pretrained("*.mnist") + zoo.list_pretrained("*.*binarized_mnist")
    cards = {n: zoo.pretrained_card(n) for n in names}
    print(table(cards))
    print()
    print("\n".join(claims(cards)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
