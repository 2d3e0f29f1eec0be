"""One prompt and its reference answer: the unit of every study's training, location and
evaluation sets (the toy world generates them, the real-model world reads them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict


@dataclass
class Sample:
    prompt: str
    response: str

    def as_dict(self) -> Dict[str, str]:
        return {"prompt": self.prompt, "response": self.response}
