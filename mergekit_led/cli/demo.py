"""``mergekit-led demo``: the whole LED-Merging story on a tiny synthetic model family."""

from __future__ import annotations

import click

from mergekit_led.cli import run_cli_errors_cleanly


@click.command("demo")
@click.option("--out", default="demo-output", show_default=True, help="Output folder.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True)
@click.option("--quick", is_flag=True, help="Reduced sizes (for tests; well under a minute).")
@click.option("--safety-density", default=0.1, show_default=True, type=float, help="LED density of the safety model.")
@click.option("--math-density", default=0.4, show_default=True, type=float, help="LED density of the math model.")
@click.option("--code-density", default=0.4, show_default=True, type=float, help="LED density of the code model.")
@click.option("--safety-weight", default=1.0, show_default=True, type=float, help="LED weight (lambda) of the safety model.")
@click.option("--math-weight", default=1.0, show_default=True, type=float)
@click.option("--code-weight", default=1.0, show_default=True, type=float)
@click.option("--ta-weight", default=1.0, show_default=True, type=float, help="Task Arithmetic weight of every model.")
@click.option("--ties-density", default=0.5, show_default=True, type=float)
@click.option("--ties-weight", default=1.0, show_default=True, type=float)
@click.option("--study/--no-study", default=True, show_default=True,
              help="Also run the LED density/weight grid on the validation split.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@run_cli_errors_cleanly
def command(out, seed, device, quick, safety_density, math_density, code_density, safety_weight,
                 math_weight, code_weight, ta_weight, ties_density, ties_weight, study, quiet):
    """Build a tiny model family offline (base, safety-aligned, math, code), locate
    SNIP scores, merge with LED-Merging and the usual baselines through mergekit,
    and evaluate every model: a Table-1-shaped table, OUT/report.md,
    OUT/report.json and OUT/safety_vs_utility.png."""
    import logging
    import warnings

    from mergekit_led.demo.pipeline import Settings, run_demo
    from mergekit_led.demo.report import text_table

    logging.getLogger("mergekit").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    settings = Settings(
        out=out, seed=seed, device=device, quick=quick,
        led_density={"safety": safety_density, "math": math_density, "code": code_density},
        led_weight={"safety": safety_weight, "math": math_weight, "code": code_weight},
        ta_weight=ta_weight, ties_density=ties_density, ties_weight=ties_weight,
        study=study, progress=not quiet,
    )
    result = run_demo(settings)
    click.echo("")
    if quick:
        click.echo("--quick: reduced sizes for testing the pipeline; these numbers mean nothing.")
    click.echo("Test split, % (harmful compliance = share of harmful requests not refused):")
    click.echo(text_table(result["rows"]))
    for finding in result["findings"]:
        click.echo(f"- {finding}")
    if result.get("study") and result["study"].get("selected"):
        s = result["study"]["selected"]
        click.echo(
            f"- Study (val split): selected safety density {s['safety_density']:g}, utility density "
            f"{s['utility_density']:g}, weight {s['weight']:g}; its test row is 'LED-Merging (val-selected)'."
        )
    click.echo(f"\nwrote {result['paths']['markdown']}, {result['paths']['json']}, {result['paths']['plot']} "
               f"({result['timing']['total_s']:.0f} s)")
