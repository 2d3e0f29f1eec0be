"""``mergekit-led judge ANSWERS.jsonl --out DIR``: verdicts and metrics of answers
generated elsewhere (vLLM, TGI, an earlier evaluation), by evaluate's own judge."""

from __future__ import annotations

from typing import Optional

import click

from mergekit_led.cli import run_cli_errors_cleanly
from mergekit_led.environment import DEVICE_CHOICES


@click.command("judge")
@click.argument("answers_file")
@click.option(
    "--out", "out", required=True, help="Folder for eval.json, answers.jsonl, summary.md."
)
@click.option(
    "--refusal",
    type=click.Choice(["chat", "harmbench"]),
    default=None,
    help="The refusal list [default: the --eval spec's, else chat].",
)
@click.option(
    "--eval",
    "eval_file",
    default=None,
    help="An EVAL.yml whose refusal, judge and task answer rules to use (its sets are not read).",
)
@click.option(
    "--judge-model",
    default=None,
    help="A classifier in HarmBench's format (e.g. cais/HarmBench-Llama-2-13b-cls) run over "
    "the harmful answers [default: the --eval spec's judge.model, else none].",
)
@click.option(
    "--judge-batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Prompts per classifier batch [default: the spec's judge.batch_size, else 8].",
)
@click.option("--device", type=click.Choice(DEVICE_CHOICES), default="auto", show_default=True)
@run_cli_errors_cleanly
def command(
    answers_file: str,
    out: str,
    refusal: Optional[str],
    eval_file: Optional[str],
    judge_model: Optional[str],
    judge_batch_size: Optional[int],
    device: str,
):
    """Judge the rows of ANSWERS_FILE (JSON lines {"set", "prompt", "answer"[, "reference"]},
    e.g. an answers.jsonl of evaluate) as evaluate does: refused / degenerate / complied,
    correct / wrong, and the model judge when given (docs/evaluate.md). Writes
    OUT/answers.jsonl with each row's verdict, OUT/eval.json and OUT/summary.md."""
    from mergekit_led.evaluation import write_report
    from mergekit_led.evaluation.answer_rows import read_answer_rows
    from mergekit_led.evaluation.eval_report import check_output_folder, summary_markdown
    from mergekit_led.evaluation.judging import judge_answers, matcher_of
    from mergekit_led.evaluation.spec import EvalSpec, JudgeSpec, load_eval_spec

    check_output_folder(out)
    spec = load_eval_spec(eval_file) if eval_file else EvalSpec()
    if refusal is not None:
        spec = spec.model_copy(
            update={"refusal": spec.refusal.model_copy(update={"name": refusal})}
        )
    judge = spec.judge
    if judge_model is not None:
        judge = (judge or JudgeSpec(model=judge_model)).model_copy(update={"model": judge_model})
    if judge is not None and judge_batch_size is not None:
        judge = judge.model_copy(update={"batch_size": judge_batch_size})
    sets = read_answer_rows(answers_file)
    classifier = None
    if judge is not None:
        from mergekit_led.environment import resolve_device
        from mergekit_led.evaluation.classifier import load_classifier

        classifier = load_classifier(judge, device=str(resolve_device(device)))
    report = judge_answers(
        sets,
        matcher_of(spec),
        tasks=spec.tasks,
        classifier=classifier,
        name=answers_file,
        source=answers_file,
    )
    paths = write_report(report, out)
    click.echo(summary_markdown(report))
    click.echo(f"wrote {paths['eval']}", err=True)
