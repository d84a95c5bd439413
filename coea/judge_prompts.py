"""The LLM-as-a-Judge serendipity prompts: Base, LS, CoT and LtM (Tokutake and Okamoto; docs/judge.md).

A sibling of :mod:`coea.prompts` (the one prompt module family, STYLE habit 6): ``coea prompts`` renders these
templates too. A judge scores one recommended category for one user from 1 to 5; a score of 4 or more counts the
category as serendipitous (:data:`SERENDIPITOUS`).

- ``base``: the task and the answer format.
- ``ls``: Base plus a Likert-scale description of the five levels.
- ``cot``: three steps in one answer -- relevance, unexpectedness, serendipity -- each with a reason and a score.
- ``ltm``: the same three steps as three chained sub-prompts (least-to-most): each later question sees the
  earlier questions and answers.

Every template is few-shot when a shots file is given (the paper: 10 shots, two per score level; :func:`load_shots`)
and zero-shot otherwise. Every answer ends in lines ``<Aspect> score: N``, which :func:`parse_scores` reads; a local
model's digit is constrained to 1-5 at generation time, an endpoint's answer is parsed and re-asked once when the
format is broken (coea/judge/backends.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

TEMPLATES = ("base", "ls", "cot", "ltm")
ASPECTS = ("relevance", "unexpectedness", "serendipity")
SERENDIPITOUS = 4  # a score >= 4 counts an item as serendipitous (the paper's threshold)
UNIT = "category"

TASK = ("You judge recommendations. Given what a user has interacted with (their history) and one recommended {unit}, "
        "rate how serendipitous the recommendation is for this user: a serendipitous {unit} is relevant to the "
        "user's interests and, at the same time, unexpected given the history. Rate from 1 (not at all) to 5 "
        "(very).")
LIKERT = ("Use this scale for the statement 'this {unit} is a serendipitous recommendation for this user': "
          "5 = strongly agree, 4 = agree, 3 = neither agree nor disagree, 2 = disagree, 1 = strongly disagree.")
STEPS = {
    "relevance": "Relevance: does the {unit} match the user's interests as the history shows them? "
                 "(1 = unrelated, 5 = clearly matches)",
    "unexpectedness": "Unexpectedness: would the user be surprised to see the {unit}, given what they usually "
                      "choose? (1 = entirely expected, 5 = very surprising)",
    "serendipity": "Serendipity: taking relevance and unexpectedness together, is the {unit} a pleasant surprise "
                   "the user would not have found alone? (1 = not at all, 5 = very)",
}
COT = "Think step by step, one step per aspect:\n" + "\n".join(
    f"Step {i + 1}. {STEPS[a]}" for i, a in enumerate(ASPECTS))


@dataclass(frozen=True)
class Shot:
    """One few-shot example: a user's history, a recommended category, its score and (optional) step details.

    ``steps`` maps an aspect (:data:`ASPECTS`) to ``(reason, score)``; CoT and LtM render the steps a shot has and
    fall back to the final score alone. ``reason`` is the serendipity reason when ``steps`` has none.
    """

    history: tuple[str, ...]
    item: str
    score: int
    reason: str = ""
    steps: dict[str, tuple[str, int]] = field(default_factory=dict)


def _score(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or not 1 <= value <= 5:
        raise ValueError(f"{where}: score must be an integer from 1 to 5, got {value!r}")
    return int(value)


def load_shots(path: str | Path) -> list[Shot]:
    """Few-shot examples from a JSON-lines file, one example per line (docs/judge.md, "Few-shot file").

    Line: ``{"history": [categories, oldest first], "item": "Jazz", "score": 4, "reason": "...", "steps":
    {"relevance": {"reason": "...", "score": 3}, ...}}``; ``reason`` and ``steps`` are optional. Blank lines are
    skipped; any other malformed line raises ``ValueError`` naming the file and line.
    """
    shots = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("history"), list) or not row.get("item"):
            raise ValueError(f"{where}: need an object with 'history' (a list), 'item' and 'score'")
        steps = {}
        for aspect, step in (row.get("steps") or {}).items():
            if aspect not in ASPECTS or not isinstance(step, dict):
                raise ValueError(f"{where}: steps must map {', '.join(ASPECTS)} to {{reason, score}}; got {aspect!r}")
            steps[aspect] = (str(step.get("reason", "")), _score(step.get("score"), f"{where} steps.{aspect}"))
        shots.append(Shot(tuple(map(str, row["history"])), str(row["item"]), _score(row.get("score"), where),
                          str(row.get("reason", "")), steps))
    return shots


def shot_balance(shots: Sequence[Shot]) -> dict[int, int]:
    """Shots per score level 1-5 (the paper uses two per level: 10 shots)."""
    return {s: sum(1 for x in shots if x.score == s) for s in range(1, 6)}


def _case(history: Sequence[str], item: str, unit: str) -> str:
    return f"User history: {', '.join(history) if history else 'none'}\nRecommended {unit}: {item}"


def answer_lines(aspect: str, reason: str, score: int | str, *, reasoning: bool) -> str:
    """The answer lines of one aspect: ``<Aspect>: reason`` (when reasoning) and ``<Aspect> score: N``."""
    name = aspect.capitalize()
    return (f"{name}: {reason}\n" if reasoning else "") + f"{name} score: {score}"


def _format(aspects: Sequence[str], reasoning: bool) -> str:
    lines = [answer_lines(a, "<one sentence>", "<1-5>", reasoning=reasoning) for a in aspects]
    return "Answer in exactly this format:\n" + "\n".join(lines)


def _shot_answer(shot: Shot, aspects: Sequence[str], reasoning: bool) -> str:
    parts = []
    for a in aspects:
        reason, score = shot.steps.get(a, (shot.reason if a == "serendipity" else "", None))
        if score is None and a != "serendipity":
            continue  # a shot without this step shows the steps it has
        parts.append(answer_lines(a, reason or "-", shot.score if score is None else score, reasoning=reasoning))
    return "\n".join(parts)


def _shots_block(shots: Sequence[Shot], aspects: Sequence[str], reasoning: bool, unit: str) -> str:
    if not shots:
        return ""
    body = "\n\n".join(f"Example {i + 1}\n{_case(s.history, s.item, unit)}\n{_shot_answer(s, aspects, reasoning)}"
                       for i, s in enumerate(shots))
    return f"Examples:\n\n{body}\n\n"


@dataclass(frozen=True)
class Call:
    """One request to the judge: the user message of this turn and the aspects its answer must score.

    ``reasoning``: the answer gives a one-sentence reason before each score. LtM's later calls are sent after the
    earlier calls' messages and answers (the conversation), every other template is one call.
    """

    prompt: str
    aspects: tuple[str, ...]
    reasoning: bool


def calls(template: str, history: Sequence[str], item: str, shots: Sequence[Shot] = (), *,
          unit: str = UNIT) -> list[Call]:
    """The user turns of ``template`` for one (history, item): one for Base / LS / CoT, three for LtM.

    ``unit`` names what is recommended in the text ("category" for coea's lists; "movie" for Serendipity-2018).
    """
    task = TASK.format(unit=unit)
    case = _case(history, item, unit)
    if template in ("base", "ls"):
        head = task + ("\n" + LIKERT.format(unit=unit) if template == "ls" else "")
        aspects = ("serendipity",)
        return [Call(f"{head}\n\n{_shots_block(shots, aspects, False, unit)}Now judge this case.\n{case}\n"
                     f"{_format(aspects, False)}", aspects, False)]
    if template == "cot":
        return [Call(f"{task}\n{COT.format(unit=unit)}\n\n{_shots_block(shots, ASPECTS, True, unit)}"
                     f"Now judge this case.\n{case}\n{_format(ASPECTS, True)}", ASPECTS, True)]
    if template == "ltm":
        first = (f"{task}\nThe question is split into three smaller ones, answered in turn.\n\n"
                 f"{_shots_block(shots, ASPECTS, True, unit)}Now judge this case.\n{case}\n\n")
        out = []
        for i, a in enumerate(ASPECTS):
            ask = f"Question {i + 1} of 3. {STEPS[a].format(unit=unit)}\n{_format((a,), True)}"
            out.append(Call((first if i == 0 else "") + ask, (a,), True))
        return out
    raise ValueError(f"unknown judge template {template!r} (known: {', '.join(TEMPLATES)})")


def parse_templates(text: str) -> list[str]:
    """``"base,cot"`` -> ["base", "cot"]; an unknown name raises ``ValueError``."""
    names = [t.strip().lower() for t in str(text).split(",") if t.strip()]
    bad = [t for t in names if t not in TEMPLATES]
    if bad or not names:
        raise ValueError(f"judge templates: unknown {bad or text!r} (known: {', '.join(TEMPLATES)})")
    return list(dict.fromkeys(names))


def parse_scores(text: str, aspects: Sequence[str]) -> dict[str, int | None]:
    """Each aspect's score in an answer; None where the answer has no valid score (never a guess).

    Reads the last ``<Aspect> score: N`` line of each aspect (case-insensitive; ``=``, markdown bold and a trailing
    ``/5`` tolerated). A one-aspect answer may also be ``Score: N`` or a bare digit. A number outside 1-5 (``7``,
    ``3.5``) is not a score.
    """
    out: dict[str, int | None] = {}
    for a in aspects:
        hits = re.findall(rf"(?im)^[\s*#>-]*{a}\s+score\s*\**\s*[:=]\s*\**\s*(\d+(?:\.\d+)?)\b(?!\.\d)", text)
        if not hits and len(aspects) == 1:
            hits = re.findall(r"(?im)^[\s*#>-]*score\s*\**\s*[:=]\s*\**\s*(\d+(?:\.\d+)?)\b(?!\.\d)", text)
            if not hits and re.fullmatch(r"\s*\**\s*(\d)\s*\**\s*\.?\s*", text):
                hits = [text.strip(" *.\n\t")]
        value = hits[-1] if hits else None
        out[a] = int(value) if value is not None and value.isdigit() and 1 <= int(value) <= 5 else None
    return out


def final_score(scores: dict[str, int | None]) -> int | None:
    """The judged score of an item: the serendipity aspect's (every template ends with it)."""
    return scores.get("serendipity")


def render_judge_sample(history: Sequence[str], item: str, shots: Sequence[Shot] = ()) -> str:
    """Every judge template rendered for one (history, item), LtM's three sub-prompts in order (``coea prompts``)."""
    parts = [f"# LLM-as-a-Judge templates ({len(shots)} shots; a shots file adds the examples: docs/judge.md)"]
    for t in TEMPLATES:
        cs = calls(t, history, item, shots)
        for i, c in enumerate(cs):
            label = f"## judge/{t}" + (f" (sub-prompt {i + 1} of {len(cs)}; sent after the earlier ones and their "
                                       "answers)" if len(cs) > 1 else "")
            parts += [label, c.prompt]
    return "\n".join(parts)
