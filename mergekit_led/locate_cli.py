"""``mergekit-led locate``: the command line of ``mergekit_led.location.locate``."""

from __future__ import annotations

import logging
import os

import click

from mergekit_led.cli import run_cli_errors_cleanly
from mergekit_led.scores import SCORE_KINDS

_DTYPE_CHOICES = ("auto", "bf16", "fp16", "fp32")


@click.command("locate", context_settings={"show_default": True})
@click.option("--model", "model", required=True, help="Checkpoint folder or hub id to score.")
@click.option(
    "--data",
    "data",
    default=None,
    help="JSONL/JSON/CSV/Parquet file, datasets save_to_disk folder, or hub dataset name "
    "(not needed by --score magnitude|random).",
)
@click.option("--out", "out", required=True, help="Importance store folder to write.")
@click.option("--score", type=click.Choice(SCORE_KINDS), default="snip", help="Score kind.")
@click.option("--base", default=None, help="Base model for --score magnitude: scores |θ − θ_base|.")
@click.option("--tokenizer", default=None, help="Tokenizer to use instead of the model's.")
@click.option("--split", default=None, help="Split of a hub dataset or DatasetDict folder [train].")
@click.option("--prompt-field", default="prompt", help="Column holding the prompt.")
@click.option("--response-field", default="response", help="Column holding the answer.")
@click.option(
    "--messages-field",
    default="messages",
    help="Column holding chat turns [{role, content}]; used when the prompt field is absent.",
)
@click.option(
    "--chat-template",
    type=click.Choice(["auto", "none"]),
    default="auto",
    help="auto: use the tokenizer's chat template when it has one.",
)
@click.option("--max-samples", type=int, default=None, help="Score at most this many samples (seeded choice).")
@click.option(
    "--max-length",
    type=int,
    default=None,
    help="Token limit per sample (default: the model's max positions); prompts are cut from the left.",
)
@click.option("--seed", type=int, default=0, help="Seed of the sample choice and of --score random.")
@click.option("--dtype", type=click.Choice(_DTYPE_CHOICES), default="auto", help="Model dtype (accumulators are float32).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto")
@click.option("--device-map", default=None, help="transformers device_map (e.g. auto) for a model larger than one GPU.")
@click.option("--offload-accumulators", is_flag=True, help="Keep the float32 accumulators in CPU memory.")
@click.option("--gradient-checkpointing", is_flag=True, help="Recompute activations in backward (less memory).")
@click.option("--checkpoint-every", type=int, default=None, help="Save progress every N samples (OUT.locate-checkpoint/).")
@click.option("--resume", is_flag=True, help="Continue from OUT.locate-checkpoint/ when it exists.")
@click.option("--overwrite", is_flag=True, help="Replace an existing store at OUT.")
@click.option("--skip-nonfinite", is_flag=True, help="Skip (and count) samples with a non-finite loss or gradient.")
@click.option("--trust-remote-code", is_flag=True, help="Allow the model's own code (passed to from_pretrained).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
@run_cli_errors_cleanly
def locate_command(model, data, out, no_progress, verbose, **options):
    """Compute LED-Merging importance scores (SNIP by default) of MODEL on a
    task's (prompt, answer) data and write them as an importance store.

    \b
    Run it twice per task: on the fine-tuned model and on the base model, with
    the same data; the two stores are `importance` and `base_importance` of
    that model in an led_merging config. Under `torchrun --nproc_per_node N
    --no-python mergekit-led locate ...` the samples are split over N processes.
    """
    from mergekit_led.location import locate

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    path = locate(model, data, out, progress=not no_progress, **options)
    if os.environ.get("RANK", "0") == "0":
        click.echo(f"Wrote importance store {path}")
