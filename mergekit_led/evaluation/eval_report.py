"""What an evaluation measured: typed results and the files ``evaluate`` writes.

``eval.json``: ``harmful_compliance`` (harmful answers neither refused nor
degenerate), ``not_refused``, ``degenerate`` and ``over_refusal`` at the top
level and ``tasks.<name>.accuracy``, each a plain number in [0, 1] with its
counts beside it (a set that was not evaluated is absent, never a
placeholder); ``more_sets.<name>`` for the extra safety sets and ``judge`` for
the model judge; ``answers.jsonl``: one row per prompt with its answer and
verdict; ``summary.md``: the same numbers as a table.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from mergekit_led.atomic import write_text
from mergekit_led.errors import EvalError
from mergekit_led.tables import markdown_table

SAFETY_VERDICTS = ("refused", "degenerate", "complied")  # in the order they are decided


@dataclass(frozen=True)
class Answer:
    set: str
    index: int
    prompt: str
    answer: str
    verdict: str  # refused | degenerate | complied (safety sets), correct | wrong (tasks)
    extracted: Optional[str] = None
    reference: Optional[str] = None
    judge: Optional[str] = None  # the model judge on a harmful answer: "yes" (harmful) or "no"

    def row(self) -> Dict[str, Any]:
        """The ``answers.jsonl`` row; ``judge`` only where the model judge ran."""
        data = asdict(self)
        if data["judge"] is None:
            del data["judge"]
        return data


@dataclass(frozen=True)
class SafetyResult:
    """The verdicts of one harmful or benign set: every answer is exactly one of
    refused, degenerate (``degenerate.is_degenerate``, not refused) or complied."""

    count: int
    refused: int
    degenerate: int = 0

    @property
    def complied(self) -> int:
        return self.count - self.refused - self.degenerate

    def share(self, refused: bool) -> float:
        return round((self.refused if refused else self.count - self.refused) / self.count, 6)

    @property
    def compliance(self) -> float:
        """Answers neither refused nor degenerate, as a share of all prompts."""
        return round(self.complied / self.count, 6)

    @property
    def degenerate_share(self) -> float:
        return round(self.degenerate / self.count, 6)


@dataclass(frozen=True)
class JudgeResult:
    """The model judge over one harmful set's answers, beside the string verdicts."""

    model: str
    count: int
    harmful: int  # answers the classifier calls an instance of the behavior
    agreed: int  # answers where "complied" (string verdict) == "yes" (classifier)

    @property
    def compliance(self) -> float:
        return round(self.harmful / self.count, 6)

    @property
    def agreement(self) -> float:
        return round(self.agreed / self.count, 6)

    def to_json(self) -> Dict[str, Any]:
        return {
            "model": self.model,
            "count": self.count,
            "harmful": self.harmful,
            "harmful_compliance": self.compliance,
            "agreed": self.agreed,
            "agreement": self.agreement,
        }


@dataclass(frozen=True)
class TaskResult:
    count: int
    correct: int
    # Teacher-forced likelihood of the references; None when only answers were judged
    # (``mergekit-led judge``: no model).
    answer_nll: Optional[float] = None
    token_accuracy: Optional[float] = None
    answer_tokens: Optional[int] = None

    @property
    def accuracy(self) -> float:
        return round(self.correct / self.count, 6)


@dataclass
class EvalReport:
    model: str
    harmful: Optional[SafetyResult] = None
    benign: Optional[SafetyResult] = None
    tasks: Dict[str, TaskResult] = field(default_factory=dict)
    more_sets: Dict[str, SafetyResult] = field(default_factory=dict)  # "harmful:<name>", ...
    judge: Dict[str, JudgeResult] = field(default_factory=dict)  # by harmful set name
    lm_eval: Dict[str, Dict[str, float]] = field(default_factory=dict)
    answers: List[Answer] = field(default_factory=list)
    seconds: float = 0.0
    settings: Dict[str, Any] = field(default_factory=dict)

    @property
    def harmful_compliance(self) -> Optional[float]:
        """Harmful answers neither refused nor degenerate, over all harmful prompts."""
        return None if self.harmful is None else self.harmful.compliance

    @property
    def not_refused(self) -> Optional[float]:
        """Harmful answers not refused (degenerate ones included): the harmful compliance
        of versions before the degenerate verdict."""
        return None if self.harmful is None else self.harmful.share(refused=False)

    @property
    def degenerate(self) -> Optional[float]:
        """Harmful answers that are degenerate (not refused), over all harmful prompts."""
        return None if self.harmful is None else self.harmful.degenerate_share

    @property
    def over_refusal(self) -> Optional[float]:
        return None if self.benign is None else self.benign.share(refused=True)

    @property
    def utility(self) -> Optional[float]:
        """The mean accuracy of the utility tasks."""
        if not self.tasks:
            return None
        return round(sum(t.accuracy for t in self.tasks.values()) / len(self.tasks), 6)

    def metrics(self) -> Dict[str, float]:
        """Every metric as one flat mapping (a sweep row's columns):
        ``harmful_compliance``, ``not_refused``, ``degenerate``, ``over_refusal``,
        ``<set>_harmful_compliance`` / ``<set>_over_refusal`` (``more_sets``),
        ``judge_agreement``, ``<task>_accuracy``, ``<task>_answer_nll``,
        ``<task>_token_accuracy``, ``utility``, and ``lm_eval:<task>:<metric>``."""
        flat: Dict[str, float] = {}
        if self.harmful is not None:
            flat["harmful_compliance"] = self.harmful_compliance
            flat["not_refused"] = self.not_refused
            flat["degenerate"] = self.degenerate
        if self.over_refusal is not None:
            flat["over_refusal"] = self.over_refusal
        for name, result in self.more_sets.items():
            kind, short = name.split(":", 1)
            if kind == "harmful":
                flat[f"{short}_harmful_compliance"] = result.compliance
            else:
                flat[f"{short}_over_refusal"] = result.share(refused=True)
        if "harmful" in self.judge:
            flat["judge_agreement"] = self.judge["harmful"].agreement
        for name, task in self.tasks.items():
            flat[f"{name}_accuracy"] = task.accuracy
            if task.answer_nll is not None:
                flat[f"{name}_answer_nll"] = task.answer_nll
                flat[f"{name}_token_accuracy"] = task.token_accuracy
        if self.utility is not None:
            flat["utility"] = self.utility
        for task, values in self.lm_eval.items():
            for metric, value in values.items():
                flat[f"lm_eval:{task}:{metric}"] = value
        return flat

    def to_json(self) -> Dict[str, Any]:
        data: Dict[str, Any] = {"model": self.model}
        if self.harmful is not None:
            data["harmful_compliance"] = self.harmful_compliance
            data["not_refused"] = self.not_refused
            data["degenerate"] = self.degenerate
            data["harmful_count"] = self.harmful.count
            data["harmful_complied"] = self.harmful.complied
            data["harmful_refused"] = self.harmful.refused
            data["harmful_degenerate"] = self.harmful.degenerate
        if self.benign is not None:
            data["over_refusal"] = self.over_refusal
            data["benign_count"] = self.benign.count
            data["benign_refused"] = self.benign.refused
            data["benign_degenerate"] = self.benign.degenerate
        if self.more_sets:
            data["more_sets"] = {
                name.split(":", 1)[1]: _more_set_json(name, result)
                for name, result in self.more_sets.items()
            }
        if self.judge:
            data["judge"] = {name: result.to_json() for name, result in self.judge.items()}
        data["tasks"] = {
            # no likelihood keys when no model measured them (``mergekit-led judge``)
            name: {
                "accuracy": task.accuracy,
                **{k: v for k, v in asdict(task).items() if v is not None},
            }
            for name, task in self.tasks.items()
        }
        if self.utility is not None:
            data["utility"] = self.utility
        if self.lm_eval:
            data["lm_eval"] = self.lm_eval
        data["seconds"] = round(self.seconds, 2)
        data["settings"] = self.settings
        return data


def _more_set_json(name: str, result: SafetyResult) -> Dict[str, Any]:
    kind = name.split(":", 1)[0]
    data: Dict[str, Any] = {"kind": kind, **asdict(result), "complied": result.complied}
    if kind == "harmful":
        data["harmful_compliance"] = result.compliance
        data["not_refused"] = result.share(refused=False)
        data["degenerate_share"] = result.degenerate_share
    else:
        data["over_refusal"] = result.share(refused=True)
    return data


def _safety_rows(label: str, result: SafetyResult, harmful: bool) -> List[List[str]]:
    if harmful:
        return [
            [
                f"{label}harmful compliance (lower is better)",
                _pct(result.compliance),
                f"{result.complied} of {result.count} complied; {result.refused} refused, "
                f"{result.degenerate} degenerate",
            ],
            [
                f"{label}not refused (complied or degenerate)",
                _pct(result.share(refused=False)),
                f"{result.count - result.refused} of {result.count}",
            ],
        ]
    return [
        [
            f"{label}over-refusal (lower is better)",
            _pct(result.share(refused=True)),
            f"{result.refused} of {result.count} refused; {result.degenerate} degenerate",
        ]
    ]


def summary_markdown(report: EvalReport) -> str:
    rows = []
    if report.harmful is not None:
        rows += _safety_rows("", report.harmful, harmful=True)
    if report.benign is not None:
        rows += _safety_rows("", report.benign, harmful=False)
    for name, result in report.more_sets.items():
        kind, short = name.split(":", 1)
        rows += _safety_rows(f"{short}: ", result, harmful=kind == "harmful")
    for name, judged in report.judge.items():
        rows.append(
            [
                f"{name}: judge model's harmful compliance",
                _pct(judged.compliance),
                f"{judged.harmful} of {judged.count}; agrees with the verdicts on "
                f"{judged.agreed} ({_pct(judged.agreement)})",
            ]
        )
    for name, task in report.tasks.items():
        likelihood = (
            ""
            if task.answer_nll is None
            else f"; answer NLL {task.answer_nll:.3f}, token accuracy {_pct(task.token_accuracy)}"
        )
        rows.append(
            [
                f"{name} accuracy",
                _pct(task.accuracy),
                f"{task.correct} of {task.count}" + likelihood,
            ]
        )
    for task, values in report.lm_eval.items():
        for metric, value in values.items():
            rows.append([f"lm-eval {task} {metric}", f"{value:.4g}", ""])
    table = markdown_table(["metric", "value", "counts"], rows)
    return f"# Evaluation of {report.model}\n\n{table}\n\nTime: {report.seconds:.1f} s.\n"


def _pct(value: Optional[float]) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


# Written by ``evaluate`` (and ``judge``) only, and first, into its output folder: a folder
# holding it is an earlier (maybe killed) evaluation's, whose files a new one may
# replace; any other non-empty folder is the user's (an eval.json of their own
# proves nothing). The text is checked, not just the name.
OUTPUT_MARKER = ".mergekit-led-evaluation"
OUTPUT_MARKER_TEXT = (
    "This folder is written by `mergekit-led evaluate` or `judge` (eval.json, answers.jsonl, summary.md);\n"
    "a new evaluation into it replaces those three files.\n"
)


def _is_evaluation_folder(out_dir: str) -> bool:
    marker = os.path.join(out_dir, OUTPUT_MARKER)
    try:
        with open(marker, encoding="utf-8") as f:
            return os.path.isfile(marker) and f.read(4096) == OUTPUT_MARKER_TEXT
    except (OSError, UnicodeDecodeError):
        return False


def _only_a_killed_marker_write(out_dir: str) -> bool:
    """Whether ``out_dir`` holds nothing but the temporary file of the marker: an
    evaluation killed while writing it, its first file."""
    from mergekit_led.atomic import stale_areas

    left = {os.path.basename(a.path) for a in stale_areas(os.path.join(out_dir, OUTPUT_MARKER))}
    return bool(left) and set(os.listdir(out_dir)) <= left


def check_output_folder(out_dir: str) -> None:
    """``out_dir`` is new, empty or an earlier evaluation's (it holds the marker
    only ``evaluate`` writes): the files written there would replace files of the
    same name that no evaluation wrote."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise EvalError(f"Evaluation output {out_dir} exists and is not a folder.")
    if (
        os.path.isdir(out_dir)
        and os.listdir(out_dir)
        and not _is_evaluation_folder(out_dir)
        and not _only_a_killed_marker_write(out_dir)
    ):
        raise EvalError(
            f"Evaluation output {out_dir} holds files and no {OUTPUT_MARKER} (it is not an "
            "earlier evaluation's folder); write into a new or empty folder."
        )


def write_report(report: EvalReport, out_dir: str) -> Dict[str, str]:
    """``eval.json``, ``answers.jsonl`` and ``summary.md`` in ``out_dir``, each
    written aside and renamed into place (a killed run leaves no half file),
    after the folder's marker (``write_text`` removes the temporary files a
    killed run left)."""
    check_output_folder(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    paths = {
        "eval": os.path.join(out_dir, "eval.json"),
        "answers": os.path.join(out_dir, "answers.jsonl"),
        "summary": os.path.join(out_dir, "summary.md"),
    }
    # The marker first: from here on the folder is recognised as this command's.
    write_text(os.path.join(out_dir, OUTPUT_MARKER), OUTPUT_MARKER_TEXT)
    write_text(
        paths["answers"],
        "".join(json.dumps(a.row(), ensure_ascii=False) + "\n" for a in report.answers),
    )
    write_text(paths["summary"], summary_markdown(report))
    # eval.json last: its presence means the other two are complete.
    write_text(paths["eval"], json.dumps(report.to_json(), indent=2, sort_keys=True) + "\n")
    return paths
