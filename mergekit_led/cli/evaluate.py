"""``mergekit-led evaluate MODEL EVAL.yml --out DIR``: is a model safe and useful?"""

from __future__ import annotations

from typing import Optional

import click

from mergekit_led.cli import run_cli_errors_cleanly
from mergekit_led.environment import DEVICE_CHOICES


@click.command("evaluate")
@click.argument("model")
@click.argument("eval_file")
@click.option(
    "--out", "out", required=True, help="Folder for eval.json, answers.jsonl, summary.md."
)
@click.option("--device", type=click.Choice(DEVICE_CHOICES), default="auto", show_default=True)
@click.option(
    "--dtype",
    default="auto",
    show_default=True,
    help="Model dtype: auto (the checkpoint's), float32, bfloat16, float16.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Prompts per generation batch [default: the spec's generation.batch_size].",
)
@click.option("--trust-remote-code", is_flag=True, help="Allow the model's own code.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@run_cli_errors_cleanly
def command(
    model: str,
    eval_file: str,
    out: str,
    device: str,
    dtype: str,
    batch_size: Optional[int],
    trust_remote_code: bool,
    quiet: bool,
):
    """Generate greedy answers of MODEL (a local folder or Hub id) to the sets of
    EVAL_FILE and measure harmful compliance, over-refusal and task accuracy
    (docs/evaluate.md). Writes OUT/eval.json, OUT/answers.jsonl and OUT/summary.md."""
    from mergekit_led.environment import resolve_device
    from mergekit_led.evaluation import (
        Evaluator,
        load_eval_spec,
        load_model_and_tokenizer,
        write_report,
    )
    from mergekit_led.evaluation.eval_report import check_output_folder, summary_markdown

    check_output_folder(out)  # before the model is loaded: fail in seconds
    spec = load_eval_spec(eval_file)
    torch_device = resolve_device(device)
    loaded, tokenizer = load_model_and_tokenizer(
        model, device=str(torch_device), dtype=dtype, trust_remote_code=trust_remote_code
    )
    evaluator = Evaluator(spec, tokenizer, batch_size=batch_size)
    if spec.judge is not None:
        evaluator.classifier(torch_device)  # a bad judge model fails before any generation
    report = evaluator.evaluate(loaded, name=model, device=torch_device, progress=not quiet)
    paths = write_report(report, out)
    click.echo(summary_markdown(report))
    click.echo(f"wrote {paths['eval']}", err=True)
