"""Run a sweep from inside a Ray cluster: the entry point for ``ray submit`` and ``ray job submit``.

    ray up ray_cluster.yaml
    ray submit ray_cluster.yaml scripts/launch_sweep.py -- profiles/qwen2-vl-7b.yaml --out /home/ubuntu/results/qwen2-vl-7b
    ray job submit --address http://HEAD:8265 --working-dir . -- python scripts/launch_sweep.py profiles/smoke.yaml

Connects to the running cluster (``address="auto"``) and otherwise behaves like ``ipcv-study run``.
Needs the project installed on the node it runs on (``ray_cluster.yaml``'s setup commands do it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.sweep.driver import run_sweep
from pipeline.sweep.spec import ProfileError, find_profile, load_spec


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", type=Path, help="a profile path (relative to here or to the project checkout) "
                        "or the name of a shipped profile")
    parser.add_argument("--out", default=None, help="output folder (absolute: the job's working directory is "
                        "temporary) or an object-storage URI (s3://bucket/prefix)")
    parser.add_argument("--address", default="auto", help="Ray address to join (default: the cluster this runs in)")
    parser.add_argument("--node-ip-address", "--node-ip", dest="node_ip_address", default=None,
                        help="this node's IP as the cluster knows it (e.g. 127.0.0.1); as ipcv-study run")
    args = parser.parse_args()
    try:
        spec = load_spec(find_profile(args.profile))
    except ProfileError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = args.out if args.out and "://" in args.out else Path(args.out or spec.output_dir).resolve()
    summary = run_sweep(spec, out, address=args.address, progress=False, node_ip_address=args.node_ip_address)
    print(f"{summary.ok} ok, {summary.failed} failed, {summary.skipped} already done (of {summary.total}); "
          f"wall {summary.wall_s:.1f} s; loads per worker {summary.loads_per_worker}; "
          f"results {summary.remote or summary.results}")
    return 130 if summary.interrupted else (1 if summary.failed else 0)


if __name__ == "__main__":
    sys.exit(main())
