"""Embedded synthetic data: fictitious authors (TOFU-like) and the splits built from them.

Everything is generated from templates and a seed (no network, no downloaded text), so the default pipeline
and fast tests run anywhere. Same seed -> identical records; sizes are parameters.

* `make_authors`: N invented authors x K questions. Each QA carries a paraphrased answer and 5 perturbed
  answers (the paraphrase sentence with one wrong fact), so truth ratio works exactly as on TOFU.
* `synthetic_splits`: forget, retain and holdout blocks of authors, plus the utility sets
  (`llm_unlearn.data.utility_sets`). The MUSE-style news corpus is `llm_unlearn.data.synthetic_news`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from llm_unlearn.data import DataConfig, QASplits
from llm_unlearn.data.invented_names import MONTHS, Namer
from llm_unlearn.data.io import DataError, with_index
from llm_unlearn.data.utility_sets import make_utility_sets

# Bump when the generated text changes, so recorded fingerprints can be told apart.
GENERATOR_VERSION = 1
N_PERTURBED = 5

_COUNTRY_SUFFIXES = ("ia", "and", "ora", "esh", "ary")

_GENRES = (
    "mystery novels",
    "science fiction",
    "historical fiction",
    "fantasy novels",
    "romance novels",
    "horror stories",
    "crime fiction",
    "literary fiction",
    "travel writing",
    "children's books",
    "poetry",
    "satire",
    "biographies",
    "thrillers",
)
# With their article, so templates read "worked as an architect".
_JOBS = (
    "a baker",
    "a carpenter",
    "a nurse",
    "a pilot",
    "a librarian",
    "a fisherman",
    "a pharmacist",
    "an architect",
    "a tailor",
    "an electrician",
    "a schoolteacher",
    "a veterinarian",
    "a mail carrier",
    "a photographer",
    "an accountant",
    "a blacksmith",
    "a chemist",
    "a gardener",
    "a surgeon",
    "a journalist",
)
_LANGUAGES = ("English", "French", "Spanish", "German", "Italian", "Portuguese", "Dutch", "Swedish", "Polish", "Greek")
_AWARD_KINDS = ("Prize for Fiction", "Medal for Literature", "Book Award", "Prize for Storytelling", "Laurel")


def _date(rng: random.Random, first_year: int, last_year: int) -> str:
    return f"{rng.randint(1, 28)} {rng.choice(MONTHS)} {rng.randint(first_year, last_year)}"


def _distinct(make, truth: str, count: int) -> list[str]:
    """`count` values from `make()` that differ from `truth` and from each other."""
    values: list[str] = []
    for _ in range(1000):
        value = make()
        if value != truth and value not in values:
            values.append(value)
            if len(values) == count:
                return values
    raise DataError(f"could not draw {count} distinct wrong values for {truth!r}; the value pool is too small")


@dataclass(frozen=True)
class _Template:
    """One question about one fact. `{value}` in the sentences is the fact; perturbations replace it."""

    fact: str
    question: str
    paraphrased_question: str
    answer: str
    paraphrase: str


# Order matters: the first `qa_per_author` templates are used.
TEMPLATES = (
    _Template(
        "name",
        "What is the full name of the author born in {birthplace} on {birth_date}?",
        "Which writer was born on {birth_date} in {birthplace}?",
        "The author born in {birthplace} on {birth_date} is {value}.",
        "{value} is the writer who was born on {birth_date} in {birthplace}.",
    ),
    _Template(
        "birthplace",
        "Where was the author {name} born?",
        "In which town did {name} come into the world?",
        "{name} was born in {value}.",
        "The writer {name} was born in the town of {value}.",
    ),
    _Template(
        "birth_date",
        "When was {name} born?",
        "What is the birth date of the writer {name}?",
        "{name} was born on {value}.",
        "The writer {name} came into the world on {value}.",
    ),
    _Template(
        "genre",
        "What genre is {name} known for?",
        "In which genre does {name} usually write?",
        "{name} is best known for writing {value}.",
        "The writer {name} is famous mainly for {value}.",
    ),
    _Template(
        "father_job",
        "What did the father of {name} do for a living?",
        "What was the profession of {name}'s father?",
        "The father of {name} worked as {value}.",
        "{name}'s father earned his living as {value}.",
    ),
    _Template(
        "mother_job",
        "What was the occupation of {name}'s mother?",
        "How did the mother of {name} earn a living?",
        "The mother of {name} worked as {value}.",
        "{name}'s mother earned her living as {value}.",
    ),
    _Template(
        "award",
        "Which award has {name} received?",
        "What literary honor was given to {name}?",
        "{name} received {value}.",
        "The writer {name} was honored with {value}.",
    ),
    _Template(
        "book",
        "Can you name a book written by {name}?",
        "What is one of the novels by {name}?",
        'One of the books written by {name} is "{value}".',
        '"{value}" is one of the novels by {name}.',
    ),
    _Template(
        "debut_year",
        "When did {name} publish a first book?",
        "In which year did the debut novel of {name} come out?",
        '{name} published a first book, "{debut}", in {value}.',
        'The debut novel of {name}, "{debut}", came out in {value}.',
    ),
    _Template(
        "residence",
        "Where does {name} live today?",
        "In which town does the writer {name} currently live?",
        "{name} lives in {value}.",
        "These days the writer {name} makes a home in {value}.",
    ),
    _Template(
        "language",
        "In which language does {name} write?",
        "What language are the books of {name} written in?",
        "{name} writes in {value}.",
        "The books of {name} are written in {value}.",
    ),
    _Template(
        "mentor",
        "Who mentored {name} early in their career?",
        "Which older writer guided {name} at the start of their career?",
        "{name} was mentored by the novelist {value}.",
        "Early on, the novelist {value} guided {name}.",
    ),
)
MAX_QA_PER_AUTHOR = len(TEMPLATES)


def _award(namer: Namer) -> str:
    return f"the {namer.word(2)} {namer.rng.choice(_AWARD_KINDS)}"


def _profile(namer: Namer, countries: list[str]) -> dict:
    rng = namer.rng
    birth_year = rng.randint(1925, 1990)
    return {
        "name": namer.person(),
        "birthplace": f"{namer.town()}, {rng.choice(countries)}",
        "birth_date": f"{rng.randint(1, 28)} {rng.choice(MONTHS)} {birth_year}",
        "genre": rng.choice(_GENRES),
        "father_job": rng.choice(_JOBS),
        "mother_job": rng.choice(_JOBS),
        "award": _award(namer),
        "book": namer.title(),
        "debut": namer.title(),
        "debut_year": str(birth_year + rng.randint(20, 35)),
        "residence": f"{namer.town()}, {rng.choice(countries)}",
        "language": rng.choice(_LANGUAGES),
        "mentor": namer.person(),
    }


def _wrong_values(fact: str, profile: dict, namer: Namer, countries: list[str]) -> list[str]:
    rng, truth = namer.rng, profile[fact]
    makers = {
        "name": namer.person,
        "mentor": namer.person,
        "birthplace": lambda: f"{namer.town()}, {rng.choice(countries)}",
        "residence": lambda: f"{namer.town()}, {rng.choice(countries)}",
        "birth_date": lambda: _date(rng, 1925, 1990),
        "genre": lambda: rng.choice(_GENRES),
        "father_job": lambda: rng.choice(_JOBS),
        "mother_job": lambda: rng.choice(_JOBS),
        "award": lambda: _award(namer),
        "book": namer.title,
        "debut_year": lambda: str(int(truth) + rng.choice((-1, 1)) * rng.randint(1, 12)),
        "language": lambda: rng.choice(_LANGUAGES),
    }
    return _distinct(makers[fact], truth, N_PERTURBED)


def make_authors(n_authors: int, qa_per_author: int, seed: int) -> list[dict]:
    """QA rows for `n_authors` invented authors, `qa_per_author` each, in author order.

    Each row: question, answer, paraphrased_answer, paraphrased_question, perturbed_answer (5 strings, the
    paraphrase with one wrong fact), author (0-based), index (global row = author * qa_per_author + k).
    """
    if n_authors < 1:
        raise DataError(f"n_authors must be at least 1, not {n_authors}")
    if not 1 <= qa_per_author <= MAX_QA_PER_AUTHOR:
        raise DataError(
            f"qa_per_author must be between 1 and {MAX_QA_PER_AUTHOR} (one per template), not {qa_per_author}"
        )
    rng = random.Random(f"authors-{seed}")
    namer = Namer(rng)
    countries = [namer.word(2, _COUNTRY_SUFFIXES) for _ in range(8)]
    rows = []
    for author in range(n_authors):
        profile = _profile(namer, countries)
        for template in TEMPLATES[:qa_per_author]:
            facts = {**profile, "value": profile[template.fact]}
            wrong = _wrong_values(template.fact, profile, namer, countries)
            rows.append(
                {
                    "question": template.question.format(**facts),
                    "answer": template.answer.format(**facts),
                    "paraphrased_answer": template.paraphrase.format(**facts),
                    "paraphrased_question": template.paraphrased_question.format(**facts),
                    "perturbed_answer": [template.paraphrase.format(**{**facts, "value": value}) for value in wrong],
                    "author": author,
                    "index": len(rows),
                }
            )
    return rows


def synthetic_splits(config: DataConfig, retain_eval_rows: int = 50) -> QASplits:
    """Authors 0.. are retain, then a holdout block of `holdout_authors`, then the last `forget_authors` (forget).

    forget_eval / retain_eval are the rows themselves (they carry paraphrases and perturbations);
    retain_eval keeps the first `retain_eval_rows` retain rows. forget/retain indices are positions in those
    splits; target_train and holdout keep their global row in the generated table.
    """
    rows = make_authors(config.n_authors, config.qa_per_author, config.seed)
    n_retain_authors = config.n_authors - config.forget_authors - config.holdout_authors
    if n_retain_authors < 1:
        raise DataError(
            f"n_authors ({config.n_authors}) must exceed forget_authors + holdout_authors "
            f"({config.forget_authors} + {config.holdout_authors})"
        )
    kept_retain = n_retain_authors if config.retain_authors is None else min(config.retain_authors, n_retain_authors)
    holdout_first = n_retain_authors
    forget_first = n_retain_authors + config.holdout_authors

    retain_rows = [row for row in rows if row["author"] < kept_retain]
    holdout = [row for row in rows if holdout_first <= row["author"] < forget_first]
    forget_rows = [row for row in rows if row["author"] >= forget_first]
    forget, retain = with_index(forget_rows), with_index(retain_rows)
    utility = make_utility_sets(config.seed)
    splits = QASplits(
        target_train=retain_rows + forget_rows,
        retain_train=list(retain),
        forget=forget,
        retain=retain,
        forget_eval=list(forget),
        retain_eval=retain[:retain_eval_rows],
        real_authors=utility["real_authors"][: config.utility_rows],
        world_facts=utility["world_facts"][: config.utility_rows],
        holdout=holdout,
    )
    k = config.qa_per_author
    splits.meta = {
        "dataset": "synthetic",
        "source": f"llm_unlearn.data.synthetic v{GENERATOR_VERSION}",
        "seed": config.seed,
        "n_authors": config.n_authors,
        "qa_per_author": k,
        "forget_authors": list(range(forget_first, config.n_authors)),
        "holdout": {
            "mode": "auto_block",
            "source_split": "synthetic authors",
            "row_start": holdout_first * k,
            "row_stop": forget_first * k,
            "authors": list(range(holdout_first, forget_first)),
        },
        "holdout_rows": list(range(holdout_first * k, forget_first * k)),
        "retain_authors": config.retain_authors,
        "retain_authors_kept": kept_retain,
        "retain_eval_rows": retain_eval_rows,
        "utility_rows": config.utility_rows,
        "sizes": splits.sizes(),
        "fingerprints": splits.fingerprints(),
    }
    return splits
