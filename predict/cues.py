"""Instruction cues that decide output length, as numbers a model can use on any prompt set.

An n-gram model learns which words of *its* training prompts go with long answers; on another
prompt set (other topics, other phrasing) much of that does not carry over. What does carry
over is what the instruction asks for: a count of items or words, brevity or detail, code, a
list, a translation or a rewrite of given text (the answer is about as long as that text), a
summary, a yes/no or multiple-choice answer. :func:`cue_features` turns each prompt into those
cues plus a few surface statistics, all cheap (compiled regular expressions, no model).

Columns (:data:`CUE_NAMES`):

* surface: log characters and words of the whole prompt, of its first line (the instruction)
  and of the rest (the *payload*: text to translate, summarise, classify...), lines, questions
  marks, digit share;
* asked-for amounts: log of the requested count of words, of sentences, of paragraphs and of
  items (``"in 3 sentences"``, ``"list 10 ideas"``, ``"under 50 words"``), and whether the
  count is an upper limit (``"no more than"``, ``"under"``, ``"at most"``);
* task flags (0/1): brief, detailed, step by step, code, list, translation, summarisation,
  rewriting/editing of given text, classification/extraction, a choice among given options,
  yes/no question, short factual question, creative writing, explanation, roleplay, math,
  follow-up to an earlier answer;
* interactions that carry the payload's size into the answer: log payload characters times the
  translation, rewrite and summary flags.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

_NUMBER_WORDS = {
    "a": 1, "an": 1, "one": 1, "single": 1, "two": 2, "couple": 2, "three": 3, "few": 3,
    "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
    "eleven": 11, "twelve": 12, "fifteen": 15, "twenty": 20, "thirty": 30, "fifty": 50,
    "hundred": 100,
}
_NUM = "(" + "|".join([r"\d{1,4}", *sorted(_NUMBER_WORDS, key=len, reverse=True)]) + ")"

#: Units a prompt can ask for, grouped: the group's column holds the largest count asked.
_UNITS = {
    "words": r"words?",
    "sentences": r"sentences?|lines?|tweets?|bullet\s+points?",
    "paragraphs": r"paragraphs?|pages?|sections?|stanzas?|verses?",
    "items": (r"items?|points?|ideas?|tips?|examples?|reasons?|ways?|steps?|names?|things?|"
              r"questions?|facts?|options?|suggestions?|words?\s+that|titles?|slogans?|"
              r"headlines?|jokes?|books?|movies?|places?|activities|recipes?|benefits?|"
              r"strategies|methods?|features?|factors?|advantages?|disadvantages?|sentences?"),
}
_COUNT = {unit: re.compile(rf"\b{_NUM}\s+(?:(?:\w+|-)\s+){{0,2}}?(?:{pattern})\b")
          for unit, pattern in _UNITS.items()}
_LIMIT = re.compile(r"\b(?:under|at most|no more than|not more than|less than|fewer than|"
                    r"maximum of|max(?:imum)?|within|up to|limit(?:ed)? to|in)\s+" + _NUM
                    + r"\s+(?:words?|sentences?|characters?|lines?|paragraphs?)")
_LIST_ITEM = re.compile(r"^\s*(?:[-*•]|\d+[.)]|[A-Ha-h][.):])\s", re.MULTILINE)

_FLAGS: dict[str, str] = {
    "brief": (r"\b(?:briefly|brief|short|shortly|concise(?:ly)?|succinct(?:ly)?|quick(?:ly)?|"
              r"in a (?:few|couple of) words|one[- ]word|single word|one sentence|"
              r"in a sentence|tl;?dr|just (?:the|say|answer|give)|only (?:the|answer|output|"
              r"return|respond|reply)|keep it short|to the point)\b"),
    "detail": (r"\b(?:in detail|detailed|elaborate|comprehensive(?:ly)?|thorough(?:ly)?|"
               r"in[- ]depth|extensive(?:ly)?|long|lengthy|essay|article|blog|report|"
               r"full|complete guide|everything)\b"),
    "steps": r"\b(?:step[- ]by[- ]step|steps|walk me through|how (?:do|can|to) (?:i|you|we))\b",
    "code": (r"(?:```|\bcode\b|\bfunction\b|\bprogram\b|\bscript\b|\bpython\b|\bjava\b|c\+\+|"
             r"\bjavascript\b|\bsql\b|\bbash\b|\bregex\b|\bhtml\b|\bcss\b|\bclass\b|"
             r"\bimplement\b|\balgorithm\b|\bdebug\b|\bcompile\b|def |\breturn\b)"),
    "list": (r"\b(?:list|bullet|enumerate|examples of|ideas for|tips|ways to|suggest(?:ions)?|"
             r"recommend(?:ations)?|options for|outline|brainstorm)\b"),
    "translate": (r"\b(?:translate|translation|translated|into (?:english|french|spanish|"
                  r"german|chinese|japanese|italian|russian|portuguese|korean|arabic)|"
                  r"(?:german|french|spanish|chinese) to english|in (?:french|spanish|german|"
                  r"chinese|japanese|italian))\b"),
    "summarize": (r"\b(?:summari[sz]e|summary|summari[sz]ation|sum up|key points|main points|"
                  r"gist|tl;?dr|highlights?)\b"),
    "rewrite": (r"\b(?:rewrite|re-write|rephrase|paraphrase|reword|proofread|correct (?:the|"
                r"this|any|grammar)|fix (?:the|this|any)|edit (?:the|this)|improve (?:the|this)|"
                r"make (?:it|this|the) (?:more|less|sound)|convert|reformat|polish|revise|"
                r"simplify (?:the|this))\b"),
    "classify": (r"\b(?:classify|categori[sz]e|category|label|sentiment|extract|identify|"
                 r"detect|determine whether|is it|true or false|rate (?:the|this)|"
                 r"which (?:one|of)|tag|choose|select|pick|answer (?:with|using)|"
                 r"respond with|output (?:only|the))\b"),
    "options": r"(?:\boptions?\s*:|\[\s*\"?[A-E]\s*[:.)]|^\s*[A-E][:.)]\s)",
    "factoid": (r"^\s*(?:who|when|where|which|what (?:is|was|are|were) the (?:name|capital|"
                r"date|year|number|population|meaning)|how (?:many|much|old|long|far|tall))\b"),
    "creative": (r"\b(?:story|poem|poetry|song|lyrics|haiku|limerick|novel|fiction|script|"
                 r"screenplay|dialogue|letter|speech|essay|blog post|article|advert(?:isement)?|"
                 r"slogan|joke|rap|sonnet|tale|narrative)\b"),
    "explain": (r"\b(?:explain|describe|discuss|compare|contrast|analy[sz]e|evaluate|why|"
                r"elaborate|what are the (?:benefits|differences|advantages|pros|causes))\b"),
    "roleplay": (r"\b(?:pretend|imagine (?:you|yourself)|act as|you are (?:a|an|the)|"
                 r"role[- ]?play|as if you|embody|persona)\b"),
    "math": (r"(?:\b(?:calculate|compute|solve|equation|how many|how much|sum of|total|"
             r"percent|probability|integral|derivative|prove|math)\b|\d\s*[-+*/^=]\s*\d)"),
    "followup": (r"\b(?:your (?:previous )?(?:answer|response|reply)|previous (?:answer|"
                 r"response)|above|you (?:just )?(?:mentioned|said|wrote)|now|again|"
                 r"continue|follow[- ]up|based on (?:your|the above))\b"),
    "plan": (r"\b(?:plan|itinerary|schedule|guide|tutorial|curriculum|proposal|strategy|"
             r"recipe|instructions|agenda|lesson)\b"),
}
_YES_NO = re.compile(r"^\s*(?:is|are|does|do|can|could|will|would|should|has|have|did|was|"
                     r"were|am|may|must|shall)\b[^?]*\?\s*$", re.IGNORECASE | re.DOTALL)
_FLAG_RES = {name: re.compile(p, re.IGNORECASE | re.MULTILINE) for name, p in _FLAGS.items()}

_SURFACE = ("log_chars", "log_words", "log_instruction_chars", "log_payload_chars", "log_lines",
            "questions", "digit_share", "list_items")
_ASKED = (*(f"asked_{u}" for u in _UNITS), "asked_limit")
_FLAG_NAMES = (*_FLAGS, "yes_no")
_INTERACT = ("payload_x_translate", "payload_x_rewrite", "payload_x_summarize")

#: Names of the columns :func:`cue_features` returns, in order.
CUE_NAMES: tuple[str, ...] = (*_SURFACE, *_ASKED, *_FLAG_NAMES, *_INTERACT)
N_CUES = len(CUE_NAMES)


def _count(token: str) -> float:
    value = _NUMBER_WORDS.get(token.lower())
    return float(value) if value is not None else float(token)


def _split_instruction(prompt: str) -> tuple[str, str]:
    """The instruction and the payload (the given text the instruction is about).

    Instructions stand before the text ("Summarize: ...", "Translate ..." and a new line) or
    after it (passages, then the question on the last line): with several lines the
    instruction is the first and the last line, the payload what lies between. One paragraph
    with an early colon is split at the colon; otherwise the whole prompt is the instruction.
    """
    lines = [x for x in prompt.strip().split("\n") if x.strip()]
    if len(lines) >= 3:
        return f"{lines[0]}\n{lines[-1]}", "\n".join(lines[1:-1])
    if len(lines) == 2:
        first, last = lines
        return (first, last) if len(first) <= len(last) else (last, first)
    text = prompt.strip()
    colon = text.find(":")
    if 0 < colon < 200 and len(text) - colon > 40:
        return text[: colon + 1], text[colon + 1:]
    return text, ""


def cue_row(prompt: str) -> list[float]:
    """The :data:`CUE_NAMES` values of one prompt (see the module docstring)."""
    instruction, payload = _split_instruction(prompt)
    low = prompt.lower()
    # Asked-for amounts are read from the instruction: a payload's "three items" is content.
    ask = instruction.lower() if payload else low
    n_chars = len(prompt)
    row = [
        np.log1p(n_chars), np.log1p(len(prompt.split())), np.log1p(len(instruction)),
        np.log1p(len(payload)), np.log1p(prompt.count("\n")), float(prompt.count("?")),
        sum(ch.isdigit() for ch in prompt) / max(n_chars, 1),
        np.log1p(len(_LIST_ITEM.findall(prompt))),
    ]
    for unit in _UNITS:
        counts = [_count(m.group(1)) for m in _COUNT[unit].finditer(ask)]
        row.append(np.log1p(max(counts)) if counts else 0.0)
    row.append(1.0 if _LIMIT.search(ask) else 0.0)
    flags = {name: 1.0 if rx.search(ask if name != "options" else prompt) else 0.0
             for name, rx in _FLAG_RES.items()}
    row.extend(flags.values())
    row.append(1.0 if _YES_NO.match(instruction) else 0.0)
    log_payload = np.log1p(len(payload))
    row.extend((log_payload * flags["translate"], log_payload * flags["rewrite"],
                log_payload * flags["summarize"]))
    return row


def cue_features(prompts: Sequence[str]) -> np.ndarray:
    """Cue matrix of ``prompts``, shape ``(n, N_CUES)`` (float64); repeated prompts once."""
    rows: dict[str, int] = {}
    inverse = np.fromiter((rows.setdefault(str(p), len(rows)) for p in prompts), np.int64,
                          len(prompts))
    distinct = np.zeros((len(rows), N_CUES), dtype=np.float64)
    for i, p in enumerate(rows):
        distinct[i] = cue_row(p)
    return distinct[inverse]
