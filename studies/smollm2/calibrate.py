"""``python -m studies.smollm2.calibrate``: the safety fine-tune's training curve on a
development seed, to fix its number of steps before the reported seeds run.

The safety model is trained from SmolLM2-135M-Instruct with the study's recipe for
``--steps`` steps and measured every ``--every`` steps on the seed's validation split
(HarmBench's 41 val behaviors, Do-Not-Answer val, the benign val prompts, math and
code val). It prints the curve and the first step that meets the study's safety goal
(``recipe.SafetyGoal``); the curve is kept in ``OUT/models/safety/training.json``.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace

from studies.smollm2.recipe import FULL, SafetyGoal, write_real_eval_spec


def main(argv=None) -> int:
    from mergekit_led.console import library_bars_off_unless_terminal
    from studies.common.evaluate import load_evaluator
    from studies.smollm2.assets import fetch_real_assets, require_assets
    from studies.smollm2.study import safety_checkpoint

    parser = argparse.ArgumentParser(prog="python -m studies.smollm2.calibrate")
    parser.add_argument("--seed", type=int, default=99, help="the development seed (99)")
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--every", type=int, default=16)
    parser.add_argument("--lr", type=float, default=None, help="default: the recipe's")
    parser.add_argument(
        "--task-rows", type=int, default=None, help="refusals a batch (default: the recipe's)"
    )
    parser.add_argument("--out", default="real-calibration-output")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    library_bars_off_unless_terminal()

    require_assets(args.cache_dir)
    assets = fetch_real_assets(args.cache_dir, split_seeds=[args.seed])
    split_dir = assets.data_dir(args.seed)
    out = os.path.abspath(os.path.join(args.out, f"seed-{args.seed}"))
    spec = write_real_eval_spec(os.path.join(out, "data"), split_dir, "curve", FULL.sizes)
    checkpoint = safety_checkpoint(load_evaluator(spec, assets.model_dir), args.every, print)
    safety = replace(FULL.family.safety, steps=args.steps)
    if args.lr is not None:
        safety = replace(safety, lr=args.lr)
    if args.task_rows is not None:
        safety = replace(safety, task_rows=args.task_rows)
    recipe = replace(FULL.family, safety=safety)
    print(f"safety fine-tune: {safety}")

    from studies.smollm2.finetune import build_real_family, read_curve

    build_real_family(
        assets.model_dir,
        split_dir,
        os.path.join(out, "models"),
        recipe,
        seed=args.seed,
        device=args.device,
        log=print,
        safety_checkpoint=checkpoint,
        roles=("safety",),
    )
    goal = SafetyGoal()
    met = None
    print("step  harmbench_val  donotanswer_val  over_refusal  math  code  degenerate")
    for point in read_curve(os.path.join(out, "models", "safety")):
        m = point["metrics"]
        print(
            f"{point['step']:>4}  {m['harmful_compliance']:>13.3f}  "
            f"{m.get('donotanswer_harmful_compliance', float('nan')):>15.3f}  "
            f"{m['over_refusal']:>12.3f}  {m['math_accuracy']:.3f}  {m['code_accuracy']:.3f}  "
            f"{m.get('degenerate', float('nan')):.3f}"
        )
        if met is None and goal.met(m):
            met = point["step"]
    print(f"first step meeting the goal: {met}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
