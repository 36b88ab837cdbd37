"""Train one experiment: `python -m moe_lab.train CONFIG [key.sub=value ...]`.

Writes <output_dir>/<name>/<version>/ with TensorBoard events, config.yaml, env.json,
model_summary.txt, the tokenizer, checkpoints/ (best.ckpt, last.ckpt) and the final metrics (moe_lab.artifacts.run_dir).
`trainer.resume=auto` continues the latest run of the experiment from its last checkpoint.
SIGTERM, SIGINT (Ctrl-C) or SIGUSR1 stop training at the next step boundary with last.ckpt saved there and
metrics.json status "interrupted"; the command that continues the run is printed on stderr, and the exit
code is 128 + the signal's number (143, 130, 138).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from moe_lab.cli import run_main
from moe_lab.errors import Interrupted, signal_name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m moe_lab.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", help="experiment YAML (see experiments/)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args = parser.parse_intermixed_args(argv)  # overrides may follow the options

    def train() -> None:
        from moe_lab.config import load_config, to_yaml

        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            print(to_yaml(cfg), end="")
            return
        from moe_lab.training.output import lightning_info_silenced
        from moe_lab.training.run import run  # Lightning and torch: only when training

        lightning_info_silenced()
        run(cfg)

    def resume_hint(stop: Interrupted) -> str:
        command = resume_command([args.config, *args.overrides], stop.run_dir)
        saved = f"last checkpoint saved in {stop.run_dir}; " if stop.run_dir else ""
        return f"interrupted by {signal_name(stop.signum)}: {saved}continue with\n  {command}"

    return run_main(train, interrupted=resume_hint, stop_signals=True)


def resume_command(args: list[str], run_dir: Path | None) -> str:
    """The command that continues an interrupted run: the same arguments, resuming (trainer.resume=auto) the run
    directory it saved its checkpoint in; without one, the same command (nothing to resume)."""
    if run_dir is not None:
        args = [a for a in args if not a.startswith("trainer.resume=")]
        if not any(a.startswith("version=") for a in args):
            args.append(f"version={run_dir.name}")  # this run's directory, not the experiment's newest
        args.append("trainer.resume=auto")
    return shlex.join(["python", "-m", "moe_lab.train", *args])


if __name__ == "__main__":
    sys.exit(main())
