"""How well a refusal judge agrees with human labels (PyRIT's refusal-scorer data).

PyRIT (``pyrit==1.1.0``, MIT) ships ``refusal.csv`` and ``refusal_extra.csv``:
rows ``objective, assistant_response, human_score, data_type`` with
``human_score`` 1 for a refusal. PyRIT's definition of a refusal also covers an
answer to a *different* question (a non-sequitur): its files pair benign
objectives with another benign objective's helpful answer and label that 1.
That is not what a string matcher (or ``evaluate``) judges, so such rows are
reported apart:

* **off-topic**: a row labelled refusal whose objective is one of the files'
  benign objectives, i.e. an objective that has a row labelled 0 in either
  file. Every such row in PyRIT 1.1.0 answers another objective's question.
* **on-topic**: every other row.

The benchmark (``benchmarks/bench_refusal_judge.py``) and the tests score the
matchers on the vendored copy in ``benchmarks/data/pyrit_refusal/``.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Callable, Iterable, List, Sequence, Tuple

from mergekit_led.errors import EvalError

PYRIT_COLUMNS = ("objective", "assistant_response", "human_score")


@dataclass(frozen=True)
class LabelledAnswer:
    source: str  # file:line of the row
    objective: str
    answer: str
    refusal: bool  # the human label
    on_topic: bool = True


@dataclass(frozen=True)
class Agreement:
    """A judge against the human labels on some rows."""

    rows: int
    agreed: int
    missed_refusals: int  # labelled refusal, judged not a refusal
    false_refusals: int  # labelled not a refusal, judged a refusal
    refusals: int  # rows labelled refusal

    @property
    def share(self) -> float:
        return round(self.agreed / self.rows, 6) if self.rows else float("nan")

    @property
    def answers(self) -> int:
        """Rows labelled not a refusal (the helpful answers)."""
        return self.rows - self.refusals


def read_pyrit_csv(path: str) -> List[LabelledAnswer]:
    """The rows of one PyRIT refusal CSV (``#`` comment lines first are skipped);
    every row needs a text answer and a 0/1 ``human_score``."""
    with open(path, encoding="utf-8", newline="") as f:
        lines = f.read().splitlines(keepends=True)
    skipped = 0
    while skipped < len(lines) and lines[skipped].startswith("#"):
        skipped += 1
    reader = csv.DictReader(io.StringIO("".join(lines[skipped:]), newline=""))
    missing = [c for c in PYRIT_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise EvalError(f"{path}: no column {', '.join(missing)} (a PyRIT refusal CSV has them).")
    rows = []
    for record in reader:
        # The header is line skipped + 1; a record may span lines, so name its start.
        where = f"{path}:{skipped + reader.line_num - _lines_in(record) + 1}"
        score = (record.get("human_score") or "").strip()
        if score not in ("0", "1"):
            raise EvalError(f"{where}: human_score must be 0 or 1, got {score!r}.")
        rows.append(
            LabelledAnswer(where, record["objective"], record["assistant_response"], score == "1")
        )
    if not rows:
        raise EvalError(f"{path} has no labelled row.")
    return rows


def _lines_in(record: dict) -> int:
    return 1 + sum(str(v).count("\n") for v in record.values() if v is not None)


def mark_off_topic(*files: Sequence[LabelledAnswer]) -> Tuple[List[LabelledAnswer], ...]:
    """Each file's rows with ``on_topic`` set (the module's definition, over all files)."""
    benign = {row.objective.strip() for rows in files for row in rows if not row.refusal}
    return tuple(
        [
            LabelledAnswer(
                r.source,
                r.objective,
                r.answer,
                r.refusal,
                not (r.refusal and r.objective.strip() in benign),
            )
            for r in rows
        ]
        for rows in files
    )


def agreement(rows: Iterable[LabelledAnswer], is_refusal: Callable[[str], bool]) -> Agreement:
    """How often ``is_refusal`` agrees with the human label on ``rows``."""
    total = agreed = missed = false = refusals = 0
    for row in rows:
        judged = is_refusal(row.answer)
        total += 1
        refusals += row.refusal
        agreed += judged == row.refusal
        missed += row.refusal and not judged
        false += judged and not row.refusal
    return Agreement(total, agreed, missed, false, refusals)


@dataclass(frozen=True)
class JudgeScore:
    """One refusal list on one file, on all rows and on the on-topic rows."""

    refusal_list: str
    file: str
    role: str  # "chosen on" or "held out"
    all_rows: Agreement
    on_topic: Agreement


def score_lists(
    files: Sequence[Tuple[str, str, Sequence[LabelledAnswer]]], lists: Sequence[str]
) -> List[JudgeScore]:
    """Every named refusal list (``refusal.REFUSAL_LISTS``) on every ``(file, role, rows)``."""
    from mergekit_led.evaluation.refusal import RefusalMatcher

    scores = []
    for name in lists:
        judge = RefusalMatcher.build(name=name).is_refusal
        for file, role, rows in files:
            on_topic = [row for row in rows if row.on_topic]
            scores.append(
                JudgeScore(name, file, role, agreement(rows, judge), agreement(on_topic, judge))
            )
    return scores


def scores_markdown(scores: Sequence[JudgeScore]) -> str:
    """The table of docs/evaluate.md: agreement, missed and false refusals per list and file."""
    from mergekit_led.tables import markdown_table

    def cells(a: Agreement) -> List[str]:
        return [
            f"{100 * a.share:.1f} % ({a.agreed}/{a.rows})",
            f"{a.missed_refusals}/{a.refusals}",
            f"{a.false_refusals}/{a.answers}",
        ]

    header = [
        "list",
        "file",
        "all rows: agreement",
        "missed refusals",
        "false refusals",
        "on-topic: agreement",
        "missed refusals",
        "false refusals",
    ]
    rows = [
        [f"`{s.refusal_list}`", f"{s.file} ({s.role})", *cells(s.all_rows), *cells(s.on_topic)]
        for s in scores
    ]
    return markdown_table(header, rows)
