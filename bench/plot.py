"""Draws bench/results/proxy-latency.png from bench/results/proxy.json: latency by percentile
(log scale) for direct, nginx and keybrake at each fixed rate."""
import json
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

root = pathlib.Path(__file__).resolve().parent / "results"
data = json.loads((root / "proxy.json").read_text())
rates = sorted(data["rates"], key=int)
fig, axes = plt.subplots(1, len(rates), figsize=(6 * len(rates), 4.5), sharey=True)
colors = {"direct": "#888888", "nginx": "#2a9d8f", "keybrake": "#e76f51"}
for ax, rate in zip(axes, rates):
    for name, run in data["rates"][rate].items():
        points = [p for p in run["curve"] if p["percentile"] < 100]
        xs = [1 / (1 - p["percentile"] / 100) for p in points]
        ax.plot(xs, [p["ms"] for p in points], marker="o", label=f"{name} (p50 {run['p50_ms']:.2f} ms)",
                color=colors.get(name))
    ax.set_xscale("log")
    ax.set_xticks([2, 10, 100, 1000, 10000])
    ax.set_xticklabels(["p50", "p90", "p99", "p99.9", "p99.99"])
    ax.set_title(f"{int(rate):,} requests/s, {data['connections']} connections (CO-corrected)")
    ax.set_xlabel("percentile")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
axes[0].set_ylabel("latency (ms)")
fig.suptitle("POST /v1/payment_intents: direct vs nginx proxy_pass vs keybrake-proxy (caps checked and settled)")
fig.tight_layout()
fig.savefig(root / "proxy-latency.png", dpi=110)
print(f"wrote {root / 'proxy-latency.png'}")
