"""VQA scoring: the soft answer score, accuracy and its breakdown by answer and question type, over
answers as `{answer: number of annotators who gave it}` (the warehouse's `questions.answers`)."""
from __future__ import annotations

import re
from collections import Counter, defaultdict

NUMBER_WORDS = frozenset("zero one two three four five six seven eight nine ten eleven twelve "
                         "thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty"
                         .split())
ANSWER_TYPES = ("yes/no", "number", "other")
QUESTION_TYPE_WORDS = 2


def vqa_score(pred: str, answers: dict[str, int]) -> float:
    """min(1, annotators who gave `pred` / 3): the form training targets use. VQA v2's official
    metric averages it over the 10 leave-one-out annotator subsets (under 1 point apart)."""
    return min(1.0, answers.get(pred, 0) / 3.0)


def top_answer(answers: dict[str, int]) -> str | None:
    """The most common ground-truth answer (ties: alphabetical first); None without answers."""
    if not answers:
        return None
    return min(answers, key=lambda a: (-answers[a], a))


def answer_type(answers: dict[str, int]) -> str:
    """VQA's convention from the top answer (computed, as only VQA v2 ships the types)."""
    top = top_answer(answers) or ""
    if top in ("yes", "no"):
        return "yes/no"
    if top.isdigit() or top in NUMBER_WORDS:
        return "number"
    return "other"


def question_type(question: str) -> str:
    """The first two words, lower case ("what color", "how many"). VQA v2's 65 hand-made prefixes
    are longer ("what color is the"); two words group the same questions here and need no list."""
    words = re.findall(r"[a-z0-9']+", question.lower())
    return " ".join(words[:QUESTION_TYPE_WORDS])


def score_report(predictions: list[str], answers: list[dict[str, int]],
                 questions: list[str]) -> dict:
    """Mean score of `predictions` against `answers`, overall and by answer / question type:
    {"vqa_acc", "n_questions", "by_answer_type": {type: {"vqa_acc", "n"}}, "by_question_type":
    {...}}. Types with no question are left out."""
    if not (len(predictions) == len(answers) == len(questions)):
        raise ValueError(f"{len(predictions)} predictions, {len(answers)} answer sets and "
                         f"{len(questions)} questions")
    scores = [vqa_score(p, a) for p, a in zip(predictions, answers)]
    return {"vqa_acc": _mean(scores), "n_questions": len(scores),
            "by_answer_type": _by(scores, [answer_type(a) for a in answers]),
            "by_question_type": _by(scores, [question_type(q) for q in questions])}


def majority_predictions(train_answers: list[dict[str, int]], train_questions: list[str],
                         questions: list[str]) -> tuple[list[str], list[str]]:
    """Two baselines for `questions` from the training questions' top answers: the single most
    common answer, and the most common answer of the question's type (the global one for a type
    not seen in training)."""
    tops = [top_answer(a) for a in train_answers]
    overall = _most_common([t for t in tops if t is not None])
    by_type: dict[str, list[str]] = defaultdict(list)
    for q, t in zip(train_questions, tops):
        if t is not None:
            by_type[question_type(q)].append(t)
    prior = {k: _most_common(v) for k, v in by_type.items()}
    return [overall] * len(questions), [prior.get(question_type(q), overall) for q in questions]


def _most_common(values: list[str]) -> str:
    counts = Counter(values)
    return min(counts, key=lambda a: (-counts[a], a)) if counts else ""


def _by(scores: list[float], keys: list[str]) -> dict:
    groups: dict[str, list[float]] = defaultdict(list)
    for s, k in zip(scores, keys):
        groups[k].append(s)
    return {k: {"vqa_acc": _mean(v), "n": len(v)} for k, v in sorted(groups.items())}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
