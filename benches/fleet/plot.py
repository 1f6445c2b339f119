"""Plot of the fleet benchmark (scripts/bench-fleet.sh): server RSS per
collector and fleet-wide push latency against the fleet size, LinkMesh
beside the bare baseline.

    python3 benches/fleet/plot.py docs/performance.json docs/performance-fleet.png
"""
import json
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

runs = sorted(json.load(open(sys.argv[1])), key=lambda f: f["n"])
n = [f["n"] for f in runs]
per = lambda f, kib: kib / f["n"]  # noqa: E731

fig, (rss, lat) = plt.subplots(1, 2, figsize=(11, 4.2))
rss.plot(n, [per(f, f["lm"]["rss_idle_kib"]) for f in runs], "o-", label="LinkMesh idle")
rss.plot(n, [per(f, f["lm"]["rss_after_kib"][-1]) for f in runs], "o--", label="LinkMesh after pushes")
rss.plot(n, [per(f, f["base"]["rss_idle_kib"]) for f in runs], "s-", label="bare baseline idle")
rss.plot(n, [per(f, f["base"]["rss_after_kib"][-1]) for f in runs], "s--", label="bare baseline after broadcasts")
rss.set_xlabel("connected collectors")
rss.set_ylabel("server RSS per collector (KiB)")
rss.set_ylim(bottom=0)
rss.legend()
rss.grid(alpha=0.3)

med = statistics.median
lat.plot(n, [med(f["lm"]["push_p50_ms"]) for f in runs], "o-", label="LinkMesh push p50")
lat.plot(n, [med(f["lm"]["push_p99_ms"]) for f in runs], "o--", label="LinkMesh push p99")
lat.plot(n, [med(f["lm"]["applied_ms"]) for f in runs], "o:", label="LinkMesh all APPLIED")
lat.plot(n, [med(f["base"]["broadcast_ms"]) for f in runs], "s-", label="baseline broadcast → all acks")
lat.set_xlabel("connected collectors")
lat.set_ylabel("ms after the API call / broadcast")
lat.set_ylim(bottom=0)
lat.legend()
lat.grid(alpha=0.3)

fig.suptitle("LinkMesh beside a bare tonic bidi-stream server (same machine, same run)")
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=110)
