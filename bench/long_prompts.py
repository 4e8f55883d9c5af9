"""The prompt file of the long-output collections: every prompt set in ``../shared/data``.

Usage: ``python bench/long_prompts.py SHARED_DATA OUT.jsonl``

One JSON line per prompt with ``id``, ``prompt``, ``category`` and ``dataset`` (the set, for
leave-one-set-out evaluation):

``specbench``    the 400 single-turn Spec-Bench questions (translation, summarization, qa,
                 math_reasoning, rag)
``mtbench``      Spec-Bench's 80 MT-bench questions, each turn a prompt of its own (160)
``alpaca_eval``  the 805 AlpacaEval instructions (category: their source set)
``ecommerce``    the 150 e-commerce task prompts (classification, ranking, sentiment)

Lines are shuffled with a fixed seed, so any prefix of the file (a run cut short) mixes the sets.
The file is never committed: AlpacaEval is CC BY-NC and the e-commerce prompts' licence is
unknown (``../shared/data/README.md``).
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from pathlib import Path

MT_BENCH = {"writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem",
            "humanities"}
ECOMMERCE = ("multiclass_product_classification", "query_product_rank", "sentiment_analysis")


def prompts(data: Path) -> list[dict[str, str]]:
    """Every prompt of the four sets, in file order."""
    out = []
    for line in (data / "specbench_questions" / "question.jsonl").read_text().splitlines():
        q = json.loads(line)
        mt = q["category"] in MT_BENCH
        for turn, text in enumerate(q["turns"] if mt else q["turns"][:1], 1):
            out.append({"id": f"sb-{q['question_id']}" + (f"-t{turn}" if mt else ""),
                        "prompt": text, "category": q["category"],
                        "dataset": "mtbench" if mt else "specbench"})
    alpaca = json.loads((data / "prompts_alpaca_eval" / "gpt4_1106_preview.json").read_text())
    out += [{"id": f"ae-{i}", "prompt": a["instruction"], "category": a["dataset"],
             "dataset": "alpaca_eval"} for i, a in enumerate(alpaca)]
    for task in ECOMMERCE:
        for line in (data / "specdec_ecommerce_bnukhkadiev" / task / "question.jsonl"
                     ).read_text().splitlines():
            q = json.loads(line)
            out.append({"id": f"ec-{q['question_id']}", "prompt": q["turns"][0],
                        "category": task, "dataset": "ecommerce"})
    return out


def main() -> None:
    """Write the shuffled prompt file; print how many prompts each set gave."""
    data, dest = Path(sys.argv[1]), Path(sys.argv[2])
    rows = prompts(data)
    random.Random(0).shuffle(rows)
    dest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(rows)} prompts written to {dest}:",
          dict(Counter(r["dataset"] for r in rows)))


if __name__ == "__main__":
    main()
