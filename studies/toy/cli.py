"""The command line both worlds share (``python -m studies.toy``, ``python -m studies.smollm2``;
``make demo``, ``make real-quick``, ``make real-study``): the options the old
``mergekit-led demo`` had, the run, and the tables it prints."""

from __future__ import annotations

import os
from typing import Optional

import click

from mergekit_led.cli import run_cli_errors_cleanly
from mergekit_led.environment import DEVICE_CHOICES

TOY_HELP = """Build a tiny model family offline per seed (base, instruct, safety, math,
    code), select each merge method's setting on a validation split, merge
    through mergekit (LED-Merging from one-YAML configs with `importance_data`,
    its SNIP stores computed by the one-command flow into OUT/seed-N/store-cache),
    and evaluate on a test split; the selected LED setting is merged again from
    bfloat16 stores. Prints the multi-seed table and findings; writes
    OUT/report.md, OUT/report.json, OUT/safety_vs_utility.png and OUT/seed-*/."""

SMOLLM2_HELP = """SmolLM2-135M-Instruct fine-tuned into safety, math and code models, merged
    like the toy world and evaluated on HarmBench (needs `make real-assets`; about 20
    minutes a seed on 2 cores, every stage cached so a rerun resumes; --ablations on
    the first seed only). Writes OUT/report.md, OUT/report.json,
    OUT/safety_vs_utility.png and OUT/seed-*/."""


def study_command(world: str, default_out: str, run_seeds=None) -> click.Command:
    """The click command of one world's study: ``toy``, or ``smollm2`` with ``run_seeds`` its
    ``run_real_demo`` (passed in, so the toy world does not import the world above it)."""

    @click.command(
        f"studies.{world}",
        help=TOY_HELP if world == "toy" else SMOLLM2_HELP,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    @click.option("--out", default=default_out, show_default=True, help="Output folder.")
    @click.option(
        "--seeds",
        default="3",
        show_default=True,
        help="N (seeds 0 to N-1), a range A-B, or a list like 0,4,7.",
    )
    @click.option("--device", type=click.Choice(DEVICE_CHOICES), default="cpu", show_default=True)
    @click.option(
        "--ablations",
        is_flag=True,
        help="Also run the paper's ablations (location random/wanda, election 01/10, "
        "disjoint off) on every seed.",
    )
    @click.option(
        "--quick", is_flag=True, help="Reduced sizes (for tests; the numbers mean nothing)."
    )
    @click.option("--quiet", is_flag=True, help="No progress output.")
    @run_cli_errors_cleanly
    def command(out, seeds, device, ablations, quick, quiet, jobs=None, cache_dir=None):
        run_study(world, out, seeds, jobs, device, ablations, cache_dir, quick, quiet, run_seeds)

    if run_seeds is None:  # the toy's seeds run side by side, one process each
        return click.option(
            "--jobs",
            default=None,
            type=int,
            help="Seeds run at a time, each in its own single-threaded process "
            "[default: the CPU count, at most the number of seeds].",
        )(command)
    # The real-model world reads assets; its seeds run one after the other, each on every core.
    return click.option(
        "--cache-dir",
        default=None,
        help="The real assets' folder [default: $MERGEKIT_LED_REAL_CACHE or "
        "~/.cache/mergekit-led/real].",
    )(command)


def run_study(
    world: str,
    out: str,
    seeds: str,
    jobs: Optional[int],
    device: str,
    ablations: bool,
    cache_dir: Optional[str],
    quick: bool,
    quiet: bool,
    run_seeds=None,
) -> None:
    """Run one world's seeds, print the tables and findings (the reports are on disk)."""
    import logging
    import warnings

    from mergekit_led.console import library_bars_off_unless_terminal
    from studies.common.study_report import (
        ablation_table,
        comparison_table,
        results_table,
        score_dtype_table,
    )
    from studies.toy.pipeline import Settings, check_jobs, parse_seeds, run_demo

    # As `mergekit-led` does: in a log (CI, `make real-quick > log`), no library's bars.
    library_bars_off_unless_terminal()
    logging.getLogger("mergekit").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    seed_list = parse_seeds(seeds)
    if run_seeds is not None:
        jobs = 1  # the real world's seeds run one after the other, each on every core
    jobs = check_jobs(jobs if jobs is not None else min(os.cpu_count() or 1, len(seed_list)))
    settings = Settings(
        out=out,
        seeds=seed_list,
        jobs=jobs,
        device=device,
        quick=quick,
        ablations=ablations,
        progress=not quiet,
        world=world,
        cache_dir=cache_dir,
    )
    summary = (run_seeds or run_demo)(settings)
    click.echo("")
    if quick:
        click.echo("--quick: reduced sizes for testing the pipeline; these numbers mean nothing.")
    click.echo(
        f"Test split, %, mean [min–max] over seeds {', '.join(map(str, seed_list))} "
        "(harmful compliance = share of harmful requests not refused):"
    )
    click.echo(results_table(summary, markdown=False))
    click.echo("")
    click.echo(comparison_table(summary, markdown=False))
    if summary.score_dtype:
        click.echo("")
        click.echo("Jaccard of N_i, float32 vs bfloat16 stores (min / mean over seeds):")
        click.echo(score_dtype_table(summary, markdown=False))
    if summary.ablations:
        click.echo("")
        click.echo(ablation_table(summary, markdown=False))
    click.echo("")
    for finding in summary.findings:
        click.echo(f"- {finding}")
    timing = summary.timing
    paths = summary.paths
    click.echo(
        f"\nwrote {paths['markdown']}, {paths['json']}, {paths['plot']} "
        f"({timing.wall_s:.0f} s wall, {timing.cpu_s:.0f} s CPU)"
    )
