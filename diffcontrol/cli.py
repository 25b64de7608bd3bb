"""The ``diffcontrol`` command: ``diffcontrol demo`` runs the main job."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    from diffcontrol import __version__

    parser = argparse.ArgumentParser(prog="diffcontrol", description="diffcontrol command line")
    parser.add_argument("--version", action="version", version=f"diffcontrol {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="learn a pendulum MPC's physics from its controls only (mpc.dx)")
    demo.add_argument("--iterations", type=int, default=60, help="training iterations (default 60)")
    demo.add_argument("--out", default="demo_output", help="folder for the figure and the table")
    demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from diffcontrol.demo import run

    run(iterations=args.iterations, out=args.out, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
