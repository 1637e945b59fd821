#!/usr/bin/python3
"""Plot moecomm-perf alltoall JSON files: bus bandwidth against size, one line per file (or per
transport/mode), so runs on different transports or machines share one chart.

    scripts/plot-perf.py -o bw.png run-ucx.json run-mpi.json [--metric algbw] [--baseline]

Uses matplotlib from Debian's packages (python3-matplotlib), hence /usr/bin/python3.
"""
import argparse
import json
import sys

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def label_of(doc, path):
    c = doc.get("config", {})
    return f"{c.get('transport', '?')}/{c.get('mode', '?')} x{c.get('ranks', '?')} ({path})"


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", help="moecomm-perf alltoall -J outputs")
    parser.add_argument("-o", "--output", required=True, help="PNG to write")
    parser.add_argument("--metric", choices=["busbw", "algbw"], default="busbw")
    parser.add_argument("--baseline", action="store_true",
                        help="also draw each file's MPI baseline, when it has one")
    args = parser.parse_args(argv)

    fig, ax = plt.subplots(figsize=(8, 5))
    for path in args.files:
        with open(path) as f:
            doc = json.load(f)
        if doc.get("command") != "alltoall":
            sys.exit(f"{path}: not a moecomm-perf alltoall result (command={doc.get('command')})")
        rows = [r for r in doc["rows"] if r.get("cycle", 0) == 0]
        sizes = [r["size"] for r in rows]
        ax.plot(sizes, [r[args.metric] for r in rows], marker="o", label=label_of(doc, path))
        if args.baseline and rows and "baseline_time_us" in rows[0]:
            n = doc["config"]["ranks"]
            scale = (n - 1) / n if args.metric == "busbw" else 1.0
            ax.plot(sizes, [r["size"] / (r["baseline_time_us"] * 1e3) * scale for r in rows],
                    linestyle="--", label=f"MPI_Alltoall ({path})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("size: one rank's send buffer (bytes)")
    ax.set_ylabel(f"{args.metric} (GB/s)")
    ax.set_title("moecomm-perf alltoall")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main(sys.argv[1:])
