"""LongBench, LongBench-E and LongBench-v2 from local files in their published layout.

Nothing is downloaded. `--data-dir` holds the files as published:
- LongBench: `{dataset}.jsonl`, one JSON object per line with `input`, `context`, `answers` (list),
  `all_classes` (list or null), `length`, `_id` (also looked for under `data/`);
- LongBench-E: `{dataset}_e.jsonl`, same fields; task name `{dataset}_e`;
- LongBench-v2: `data.json` (a JSON array) or `longbench_v2.jsonl`, objects with `context`,
  `question`, `choice_A`..`choice_D`, `answer` (a letter), `_id`, `length`, `difficulty`; task name
  `longbench_v2`.

Prompts use LongBench's templates and generation lengths; a prompt longer than the length budget is
cut in the middle (its first and last half-budget tokens kept), as LongBench's pred.py does (we keep
the token ids instead of decoding and re-encoding them). No chat template is applied (plain text, as
for the default model). trec / triviaqa / samsum / lsht predictions are cut to their first line
before scoring, and samsum stops at a newline, as in LongBench. Chinese datasets whose metric needs
the `jieba` segmenter (multifieldqa_zh, dureader, vcsum) are refused with a clear error.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import scoring as M
from .sample import EvalSample, bos_ids, token_ids

# hotpotqa, 2wikimqa and musique share one published template.
MULTI_DOC_QA = "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:"  # noqa: E501

PROMPTS = {
    "narrativeqa": "You are given a story, which can be either a novel or a movie script, and a question. Answer the question as concisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nStory: {context}\n\nNow, answer the question based on the story as concisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",  # noqa: E501
    "qasper": "You are given a scientific article and a question. Answer the question as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nArticle: {context}\n\n Answer the question based on the above article as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",  # noqa: E501
    "multifieldqa_en": "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following question based on the above text, only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",  # noqa: E501
    "hotpotqa": MULTI_DOC_QA,
    "2wikimqa": MULTI_DOC_QA,
    "musique": MULTI_DOC_QA,
    "gov_report": "You are given a report by a government agency. Write a one-page summary of the report.\n\nReport:\n{context}\n\nNow, write a one-page summary of the report.\n\nSummary:",  # noqa: E501
    "qmsum": "You are given a meeting transcript and a query containing a question or instruction. Answer the query in one or more sentences.\n\nTranscript:\n{context}\n\nNow, answer the query based on the above meeting transcript in one or more sentences.\n\nQuery: {input}\nAnswer:",  # noqa: E501
    "multi_news": "You are given several news passages. Write a one-page summary of all news. \n\nNews:\n{context}\n\nNow, write a one-page summary of all the news.\n\nSummary:",  # noqa: E501
    "trec": "Please determine the type of the question below. Here are some examples of questions.\n\n{context}\n{input}",  # noqa: E501
    "triviaqa": "Answer the question based on the given passage. Only give me the answer and do not output any other words. The following are some examples.\n\n{context}\n\n{input}",  # noqa: E501
    "samsum": "Summarize the dialogue into a few short sentences. The following are some examples.\n\n{context}\n\n{input}",  # noqa: E501
    "lsht": "请判断给定新闻的类别，下面是一些例子。\n\n{context}\n{input}",
    "passage_count": "There are some paragraphs below sourced from Wikipedia. Some of them may be duplicates. Please carefully read these paragraphs and determine how many unique paragraphs there are after removing duplicates. In other words, how many non-repeating paragraphs are there in total?\n\n{context}\n\nPlease enter the final count of unique paragraphs after removing duplicates. The output format should only contain the number, such as 1, 2, 3, and so on.\n\nThe final answer is: ",  # noqa: E501
    "passage_retrieval_en": "Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine which paragraph the abstract is from.\n\n{context}\n\nThe following is an abstract.\n\n{input}\n\nPlease enter the number of the paragraph that the abstract is from. The answer format must be like \"Paragraph 1\", \"Paragraph 2\", etc.\n\nThe answer is: ",  # noqa: E501
    "passage_retrieval_zh": "以下是若干段落文字，以及其中一个段落的摘要。请确定给定的摘要出自哪一段。\n\n{context}\n\n下面是一个摘要\n\n{input}\n\n请输入摘要所属段落的编号。答案格式必须是\"段落1\"，\"段落2\"等格式\n\n答案是：",  # noqa: E501
    "lcc": "Please complete the code given below. \n{context}Next line of code:\n",
    "repobench-p": "Please complete the code given below. \n{context}{input}Next line of code:\n",
}
MAX_NEW_TOKENS = {"narrativeqa": 128, "qasper": 128, "multifieldqa_en": 64, "hotpotqa": 32, "2wikimqa": 32,
                  "musique": 32, "gov_report": 512, "qmsum": 512, "multi_news": 512, "trec": 64, "triviaqa": 32,
                  "samsum": 128, "lsht": 64, "passage_count": 32, "passage_retrieval_en": 32,
                  "passage_retrieval_zh": 32, "lcc": 64, "repobench-p": 64}
METRICS = {"narrativeqa": M.qa_f1_score, "qasper": M.qa_f1_score, "multifieldqa_en": M.qa_f1_score,
           "hotpotqa": M.qa_f1_score, "2wikimqa": M.qa_f1_score, "musique": M.qa_f1_score,
           "gov_report": M.rouge_score, "qmsum": M.rouge_score, "multi_news": M.rouge_score,
           "trec": M.classification_score, "triviaqa": M.qa_f1_score, "samsum": M.rouge_score,
           "lsht": M.classification_score, "passage_count": M.count_score,
           "passage_retrieval_en": M.retrieval_score, "passage_retrieval_zh": M.retrieval_zh_score,
           "lcc": M.code_sim_score, "repobench-p": M.code_sim_score}
FIRST_LINE = ("trec", "triviaqa", "samsum", "lsht")  # scored on the first line of the prediction
NEEDS_JIEBA = ("multifieldqa_zh", "dureader", "vcsum")
LONGBENCH_E = ("qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "gov_report", "multi_news", "trec",
               "triviaqa", "samsum", "passage_count", "passage_retrieval_en", "lcc", "repobench-p")
V2_TEMPLATE = ("Please read the following text and answer the question below.\n\n<text>\n$DOC$\n</text>\n\n"
               "What is the correct answer to this question: $Q$\nChoices:\n(A) $C_A$\n(B) $C_B$\n(C) $C_C$\n"
               "(D) $C_D$\n\nFormat your response as follows: \"The correct answer is (insert answer here)\".")
V2_MAX_NEW_TOKENS = 128
V2 = "longbench_v2"


def task_names() -> list[str]:
    return list(PROMPTS) + [f"{d}_e" for d in LONGBENCH_E] + [V2]


def is_longbench_task(task: str) -> bool:
    return task in task_names() or task in NEEDS_JIEBA or task.removesuffix("_e") in NEEDS_JIEBA


def e_bucket(length) -> str:
    """LongBench-E's length bucket of a sample (its `length` field, in words/characters)."""
    return "0-4k" if length < 4000 else ("4-8k" if length < 8000 else "8k+")


# ---------------------------------------------------------------- files

def _find(data_dir: Path, names: list[str]) -> Path:
    for base in (data_dir, data_dir / "data"):
        for name in names:
            if (base / name).is_file():
                return base / name
    raise ValueError(f"no {' or '.join(names)} in the data directory {str(data_dir)!r} (or its data/ folder)")


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: malformed JSON line ({err.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            row["_line"] = lineno
            rows.append(row)
    return rows


def _need(row: dict, keys, path: Path) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise ValueError(f"{path}:{row.get('_line', '?')}: missing field(s) {missing}")


def load_rows(data_dir, task: str, n: int | None = None) -> list[dict]:
    """The first n records of a LongBench / LongBench-E / LongBench-v2 task."""
    if data_dir is None:
        raise ValueError(f"task {task!r} reads local files: give the data directory (--data-dir)")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ValueError(f"data directory {str(data_dir)!r} does not exist")
    if task == V2:
        path = _find(data_dir, ["data.json", "longbench_v2.jsonl", "data.jsonl"])
        if path.suffix == ".json":
            try:
                rows = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{err.lineno}: malformed JSON ({err.msg})") from None
            if not isinstance(rows, list):
                raise ValueError(f"{path}: expected a JSON array of LongBench-v2 records")
            for i, row in enumerate(rows):
                if isinstance(row, dict):
                    row["_line"] = f"record {i}"
        else:
            rows = read_jsonl(path)
        keys = ("context", "question", "choice_A", "choice_B", "choice_C", "choice_D", "answer")
    else:
        dataset = task.removesuffix("_e") if task.endswith("_e") else task
        if dataset in NEEDS_JIEBA:
            raise ValueError(f"task {task!r} is scored with the jieba Chinese segmenter, which is not installed "
                             "with elastic-attention; its metrics are not provided")
        if dataset not in PROMPTS or (task.endswith("_e") and dataset not in LONGBENCH_E):
            raise ValueError(f"unknown LongBench task {task!r}; known tasks: {', '.join(task_names())}")
        path = _find(data_dir, [f"{task}.jsonl"])
        rows = read_jsonl(path)
        keys = ("input", "context", "answers")
    rows = rows[:n] if n is not None else rows
    for row in rows:
        _need(row, keys, path)
    return rows


# ---------------------------------------------------------------- prompts

def truncate_middle(ids: list[int], budget: int) -> list[int]:
    """Keep the first and the last budget // 2 tokens of a prompt longer than budget."""
    if len(ids) <= budget:
        return ids
    half = budget // 2
    return ids[:half] + ids[len(ids) - half:]


def longbench_sample(tokenizer, task: str, row: dict, budget: int) -> EvalSample:
    if task == V2:
        text = V2_TEMPLATE.replace("$DOC$", row["context"].strip()).replace("$Q$", row["question"].strip())
        for letter in "ABCD":
            text = text.replace(f"$C_{letter}$", row[f"choice_{letter}"].strip())
        answers, max_new, stop = [row["answer"]], V2_MAX_NEW_TOKENS, False

        def scorer(pred):
            return M.choice_score(pred, row["answer"])
    else:
        dataset = task.removesuffix("_e") if task.endswith("_e") else task
        text = PROMPTS[dataset].format(context=row["context"], input=row["input"])
        answers = [str(a) for a in row["answers"]]
        max_new, stop = MAX_NEW_TOKENS[dataset], dataset == "samsum"
        metric, classes = METRICS[dataset], row.get("all_classes")

        def scorer(pred):
            if dataset in FIRST_LINE:
                pred = pred.lstrip("\n").split("\n")[0]
            return M.best_of(metric, pred, answers, all_classes=classes)
    ids = bos_ids(tokenizer) + truncate_middle(token_ids(tokenizer, text), budget - len(bos_ids(tokenizer)))
    info = {"id": row.get("_id"), "source_length": row.get("length"), "truncated_to": budget}
    if task.endswith("_e") and isinstance(row.get("length"), (int, float)):
        info["bucket"] = e_bucket(row["length"])
    if task == V2:
        info["difficulty"] = row.get("difficulty")
    return EvalSample(task=task, input_ids=ids, answers=answers, max_new_tokens=max_new, scorer=scorer,
                      stop_at_newline=stop, info=info)


def longbench_samples(tokenizer, task: str, budget: int, n: int | None, data_dir) -> list[EvalSample]:
    if not isinstance(budget, int) or budget < 2:
        raise ValueError(f"length budget {budget!r} must be an integer of at least 2 tokens")
    return [longbench_sample(tokenizer, task, row, budget) for row in load_rows(data_dir, task, n)]
