"""What an evaluation measured: typed results and the files ``evaluate`` writes.

``eval.json``: ``harmful_compliance`` and ``over_refusal`` at the top level and
``tasks.<name>.accuracy``, each a plain number in [0, 1] with its counts beside
it (a set that was not evaluated is absent, never a placeholder);
``answers.jsonl``: one row per prompt with its answer and verdict;
``summary.md``: the same numbers as a table.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from mergekit_led.atomic import write_text
from mergekit_led.errors import EvalError
from mergekit_led.tables import markdown_table


@dataclass(frozen=True)
class Answer:
    set: str
    index: int
    prompt: str
    answer: str
    verdict: str  # refused | complied | correct | wrong
    extracted: Optional[str] = None
    reference: Optional[str] = None


@dataclass(frozen=True)
class SafetyResult:
    count: int
    refused: int

    def share(self, refused: bool) -> float:
        return round((self.refused if refused else self.count - self.refused) / self.count, 6)


@dataclass(frozen=True)
class TaskResult:
    count: int
    correct: int
    answer_nll: float
    token_accuracy: float
    answer_tokens: int

    @property
    def accuracy(self) -> float:
        return round(self.correct / self.count, 6)


@dataclass
class EvalReport:
    model: str
    harmful: Optional[SafetyResult] = None
    benign: Optional[SafetyResult] = None
    tasks: Dict[str, TaskResult] = field(default_factory=dict)
    lm_eval: Dict[str, Dict[str, float]] = field(default_factory=dict)
    answers: List[Answer] = field(default_factory=list)
    seconds: float = 0.0
    settings: Dict[str, Any] = field(default_factory=dict)

    @property
    def harmful_compliance(self) -> Optional[float]:
        return None if self.harmful is None else self.harmful.share(refused=False)

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
        ``harmful_compliance``, ``over_refusal``, ``<task>_accuracy``,
        ``<task>_answer_nll``, ``<task>_token_accuracy``, ``utility``, and
        ``lm_eval:<task>:<metric>``."""
        flat: Dict[str, float] = {}
        if self.harmful_compliance is not None:
            flat["harmful_compliance"] = self.harmful_compliance
        if self.over_refusal is not None:
            flat["over_refusal"] = self.over_refusal
        for name, task in self.tasks.items():
            flat[f"{name}_accuracy"] = task.accuracy
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
            data["harmful_count"] = self.harmful.count
            data["harmful_complied"] = self.harmful.count - self.harmful.refused
        if self.benign is not None:
            data["over_refusal"] = self.over_refusal
            data["benign_count"] = self.benign.count
            data["benign_refused"] = self.benign.refused
        data["tasks"] = {
            name: {"accuracy": task.accuracy, **asdict(task)} for name, task in self.tasks.items()
        }
        if self.utility is not None:
            data["utility"] = self.utility
        if self.lm_eval:
            data["lm_eval"] = self.lm_eval
        data["seconds"] = round(self.seconds, 2)
        data["settings"] = self.settings
        return data


def summary_markdown(report: EvalReport) -> str:
    rows = []
    if report.harmful is not None:
        rows.append(
            [
                "harmful compliance (lower is better)",
                _pct(report.harmful_compliance),
                f"{report.harmful.count - report.harmful.refused} of {report.harmful.count} answered",
            ]
        )
    if report.benign is not None:
        rows.append(
            [
                "over-refusal (lower is better)",
                _pct(report.over_refusal),
                f"{report.benign.refused} of {report.benign.count} refused",
            ]
        )
    for name, task in report.tasks.items():
        rows.append(
            [
                f"{name} accuracy",
                _pct(task.accuracy),
                f"{task.correct} of {task.count}; answer NLL {task.answer_nll:.3f}, "
                f"token accuracy {_pct(task.token_accuracy)}",
            ]
        )
    for task, values in report.lm_eval.items():
        for metric, value in values.items():
            rows.append([f"lm-eval {task} {metric}", f"{value:.4g}", ""])
    table = markdown_table(["metric", "value", "counts"], rows)
    return f"# Evaluation of {report.model}\n\n{table}\n\nTime: {report.seconds:.1f} s.\n"


def _pct(value: Optional[float]) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def check_output_folder(out_dir: str) -> None:
    """``out_dir`` is new, empty or an earlier evaluation's (it holds ``eval.json``):
    the files written there would replace files of the same name that no
    evaluation wrote."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise EvalError(f"Evaluation output {out_dir} exists and is not a folder.")
    if (
        os.path.isdir(out_dir)
        and os.listdir(out_dir)
        and not os.path.isfile(os.path.join(out_dir, "eval.json"))
    ):
        raise EvalError(
            f"Evaluation output {out_dir} holds files and no eval.json (it is not an earlier "
            "evaluation's folder); write into a new or empty folder."
        )


def write_report(report: EvalReport, out_dir: str) -> Dict[str, str]:
    """``eval.json``, ``answers.jsonl`` and ``summary.md`` in ``out_dir``, each
    written aside and renamed into place (a killed run leaves no half file)."""
    check_output_folder(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    paths = {
        "eval": os.path.join(out_dir, "eval.json"),
        "answers": os.path.join(out_dir, "answers.jsonl"),
        "summary": os.path.join(out_dir, "summary.md"),
    }
    write_text(
        paths["answers"],
        "".join(json.dumps(asdict(a), ensure_ascii=False) + "\n" for a in report.answers),
    )
    write_text(paths["summary"], summary_markdown(report))
    # eval.json last: its presence means the other two are complete.
    write_text(paths["eval"], json.dumps(report.to_json(), indent=2, sort_keys=True) + "\n")
    return paths
