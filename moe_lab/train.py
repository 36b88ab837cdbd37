"""Train one experiment: `python -m moe_lab.train CONFIG [key.sub=value ...]`.

Writes <output_dir>/<name>/<version>/ with TensorBoard events, config.yaml, env.json,
model_summary.txt, the tokenizer, checkpoints/ (best.ckpt, last.ckpt) and the final metrics (moe_lab.artifacts.run_dir).
`trainer.resume=auto` continues the latest run of the experiment from its last checkpoint.
"""

from __future__ import annotations

import argparse
import sys

from moe_lab.cli import run_main


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
        from moe_lab.training.run import run  # Lightning and torch: only when training

        run(cfg)

    return run_main(train, interrupted="interrupted: resume with trainer.resume=auto")


if __name__ == "__main__":
    sys.exit(main())
