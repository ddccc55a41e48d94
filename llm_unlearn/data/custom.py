"""Your own forget / retain / holdout sets, in the shapes TRL and `datasets` users already have.

Each set is a local file (`.json` list, `.jsonl`, `.csv`, `.parquet`) or a dataset `load_dataset` can open (a
Hub id with an optional config name, or a local dataset folder) with a split. After the optional `columns`
renaming ({our name: your column}), every row has one of four shapes, the same in every set:

* question/answer: `question`, `answer`;
* prompt-completion: `prompt`, `completion` (strings, or TRL's conversational lists of messages);
* conversational: `messages`, a list of {role, content} ending with the assistant's answer to one user turn;
* language modelling: `text` (documents; training and scoring cut them into `format.max_length` windows).

The first three become question/answer records. Optional `paraphrased_answer` (a string) and `perturbed_answer`
(a list of strings) columns switch on truth ratio and forget quality. Every problem names the set, the source,
the row and what was expected, and is raised while loading, before a run folder exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from llm_unlearn.data.io import DataError, read_records

FILE_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")
SETS = ("forget", "retain", "holdout")
QA_SHAPES = {
    "question/answer": ("question", "answer"),
    "prompt-completion": ("prompt", "completion"),
    "conversational": ("messages",),
}
TEXT_SHAPE = ("text",)
OPTIONAL_QA_COLUMNS = ("paraphrased_answer", "perturbed_answer")


@dataclass
class DataFiles:
    """One set of your data. path: a local .json (list of objects), .jsonl, .csv or .parquet file. id: instead of
    path, a dataset `datasets.load_dataset` opens (a Hub id, or a local dataset folder), with `name` (its config)
    and `split`. columns: {our column: your column}, e.g. {question: prompt_text, answer: reply}. min_chars: text
    documents shorter than this many characters (whitespace stripped) are dropped before loading, e.g. 1 for a
    corpus with empty lines (wikitext); 0 keeps every row (an empty one is then an error)."""

    path: str | None = None
    id: str | None = None
    name: str | None = None
    split: str = "train"
    columns: dict[str, str] = field(default_factory=dict)
    min_chars: int = 0

    def check(self, where: str) -> None:
        if (self.path is None) == (self.id is None):
            raise DataError(f"{where}: give exactly one of path (a local file) or id (a Hub dataset or folder)")
        if self.min_chars < 0:
            raise DataError(f"{where}.min_chars must be 0 (keep every row) or more, not {self.min_chars}")
        if self.path is not None:
            if Path(self.path).suffix.lower() not in FILE_SUFFIXES:
                raise DataError(
                    f"{where}.path {self.path}: unsupported file type; use one of {', '.join(FILE_SUFFIXES)} "
                    "(or id: for a dataset folder)"
                )
            if not Path(self.path).expanduser().is_file():
                raise DataError(f"{where}.path: file {self.path} does not exist")

    def describe(self) -> str:
        return self.path if self.path is not None else f"{self.id}[{self.name or 'default'}:{self.split}]"


@dataclass
class CustomData:
    """Loaded sets: `kind` is "qa" or "text"; records carry `index` (row position in their set)."""

    kind: str
    forget: list[dict]
    retain: list[dict]
    holdout: list[dict]
    sources: dict[str, str]

    @property
    def has_truth_ratio_columns(self) -> bool:
        return has_truth_ratio_columns(self.forget + self.retain)


def has_truth_ratio_columns(rows: list[dict]) -> bool:
    """Every row carries paraphrased_answer and perturbed_answer (truth ratio and forget quality can run)."""
    return all(all(key in row for key in OPTIONAL_QA_COLUMNS) for row in rows)


def _read_rows(files: DataFiles, where: str) -> list[dict]:
    if files.path is not None and Path(files.path).suffix.lower() in (".json", ".jsonl"):
        return read_records(Path(files.path).expanduser())  # our parser: errors name the line
    import datasets

    try:
        if files.path is not None:
            builder = Path(files.path).suffix.lower().lstrip(".")
            table = datasets.load_dataset(builder, data_files=str(Path(files.path).expanduser()), split="train")
        else:
            table = datasets.load_dataset(files.id, files.name, split=files.split)
    except (FileNotFoundError, ValueError, ConnectionError, datasets.exceptions.DatasetNotFoundError) as err:
        raise DataError(f"{where} ({files.describe()}): could not load it: {' '.join(str(err).split())}") from None
    return [dict(row) for row in table]


def _renamed(rows: list[dict], columns: dict[str, str], where: str) -> list[dict]:
    if not columns:
        return rows
    present = set(rows[0]) if rows else set()
    if missing := [theirs for theirs in columns.values() if theirs not in present]:
        raise DataError(
            f"{where}.columns: column(s) {missing} are not in the data (its columns: {', '.join(sorted(present))})"
        )
    inverse = {theirs: ours for ours, theirs in columns.items()}
    return [{inverse.get(key, key): value for key, value in row.items()} for row in rows]


def _shape(row: dict) -> str | None:
    for shape, keys in QA_SHAPES.items():
        if all(key in row for key in keys):
            return shape
    return "text" if "text" in row else None


def _string(value, where: str, row: int, column: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}, row {row}: {column} must be a non-empty string (got {value!r:.60})")
    return value


def _turns(messages, where: str, row: int, column: str) -> list[dict]:
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages
    ):
        raise DataError(f"{where}, row {row}: {column} must be a list of {{role, content}} messages")
    return messages


def _from_messages(messages: list[dict], where: str, row: int) -> tuple[str, str]:
    roles = [m["role"] for m in messages]
    if roles != ["user", "assistant"]:
        hint = (
            "put a system message into format.system_prompt instead"
            if "system" in roles
            else "multi-turn conversations are not supported; keep the last user turn and the answer"
        )
        raise DataError(
            f"{where}, row {row}: messages must be one user turn then the assistant's answer (got roles {roles}); "
            + hint
        )
    return messages[0]["content"], messages[1]["content"]


def _qa_record(row: dict, shape: str, where: str, index: int) -> dict:
    if shape == "question/answer":
        question, answer = row["question"], row["answer"]
    elif shape == "prompt-completion" and isinstance(row["prompt"], list):
        prompt = _turns(row["prompt"], where, index, "prompt")
        completion = _turns(row["completion"], where, index, "completion")
        question, answer = _from_messages(prompt + completion, where, index)
    elif shape == "prompt-completion":
        question, answer = row["prompt"], row["completion"]
    else:
        question, answer = _from_messages(_turns(row["messages"], where, index, "messages"), where, index)
    record = {
        "question": _string(question, where, index, "question"),
        "answer": _string(answer, where, index, "answer"),
        "index": index,
    }
    if row.get("paraphrased_answer") is not None:
        record["paraphrased_answer"] = _string(row["paraphrased_answer"], where, index, "paraphrased_answer")
    perturbed = row.get("perturbed_answer")
    if perturbed is not None:
        if not isinstance(perturbed, list) or not perturbed or not all(isinstance(p, str) for p in perturbed):
            raise DataError(f"{where}, row {index}: perturbed_answer must be a non-empty list of strings")
        record["perturbed_answer"] = list(perturbed)
    return record


def _normalise(rows: list[dict], where: str) -> tuple[str, list[dict]]:
    if not rows:
        raise DataError(f"{where}: the set has no rows; expected at least one")
    shapes = set()
    for index, row in enumerate(rows):
        shape = _shape(row)
        if shape is None:
            expected = "; ".join(f"{name}: {', '.join(keys)}" for name, keys in QA_SHAPES.items())
            raise DataError(
                f"{where}, row {index}: no known shape (columns {', '.join(sorted(row)) or 'none'}); expected "
                f"{expected}; or text (rename other columns with columns: {{our name: your column}})"
            )
        shapes.add(shape)
    kinds = {"text" if shape == "text" else "qa" for shape in shapes}
    if len(kinds) > 1:
        raise DataError(f"{where}: rows mix text and question/answer shapes; use one shape per set")
    if kinds == {"text"}:
        return "text", [{"text": _string(r["text"], where, i, "text"), "index": i} for i, r in enumerate(rows)]
    return "qa", [_qa_record(row, _shape(row), where, i) for i, row in enumerate(rows)]


def load_custom(sets: dict[str, DataFiles | None]) -> CustomData:
    """Load and check `forget`, `retain` (required) and `holdout` (optional): one kind for all of them."""
    for name in ("forget", "retain"):
        if sets.get(name) is None:
            raise DataError(f"data.{name}: required for dataset custom (a file path or a dataset id)")
    loaded, kinds = {}, {}
    for name in SETS:
        files = sets.get(name)
        if files is None:
            continue
        where = f"data.{name}"
        files.check(where)
        rows = _renamed(_read_rows(files, where), files.columns, where)
        if files.min_chars:
            rows = [row for row in rows if "text" not in row or len(str(row["text"]).strip()) >= files.min_chars]
        kinds[name], loaded[name] = _normalise(rows, f"{where} ({files.describe()})")
    if len(set(kinds.values())) > 1:
        raise DataError(f"data: the sets mix text and question/answer data ({kinds}); use one kind for all sets")
    return CustomData(
        kind=kinds["forget"],
        forget=loaded["forget"],
        retain=loaded["retain"],
        holdout=loaded.get("holdout", []),
        sources={name: files.describe() for name, files in sets.items() if files is not None},
    )
