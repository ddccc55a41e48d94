"""Invented news articles in the MUSE-News layout (see `llm_unlearn.data.muse`), generated from templates and a
seed like the synthetic authors: no network, no downloaded text; same seed -> identical records."""

from __future__ import annotations

import random

from llm_unlearn.data.invented_names import MONTHS, Namer
from llm_unlearn.data.io import DataError, with_index

_FACILITIES = (
    ("bridge", "linking the old town with the harbor district"),
    ("public library", "with room for two hundred thousand books"),
    ("water treatment plant", "serving the northern valleys"),
    ("ferry terminal", "for boats crossing the bay"),
    ("solar farm", "built on a former quarry"),
    ("concert hall", "with seats for three thousand listeners"),
    ("railway station", "on the new coastal line"),
    ("research station", "studying glaciers in the mountains"),
    ("children's hospital", "with a rooftop garden"),
    ("seed bank", "storing samples of local crops"),
    ("sports arena", "for the regional games"),
    ("science museum", "in a restored textile mill"),
)
_LEAD_VERBS = ("opened", "unveiled", "inaugurated", "completed")
_ROLES = ("director", "chief executive", "president", "chair", "managing director")
_ORG_KINDS = ("Foundation", "Development Agency", "Cooperative", "Works Authority", "Trust", "Consortium")
_GROUPS = ("Residents' Association", "Taxpayers' League", "Heritage Society", "Civic Forum", "Neighborhood Council")
_FORMER_JOBS = ("engineer", "mayor", "teacher", "sea captain", "banker", "nurse", "geologist", "city planner")
_QUOTES = (
    "This is a day the whole region has waited for",
    "We built this for the next fifty years, not the next five",
    "Every family in the valley will feel the difference",
    "It took patience, but the result speaks for itself",
    "We kept our promise to finish on schedule",
    "This belongs to everyone who lives here",
)
_ACTIVITIES = (
    "a brass band and a fireworks display",
    "guided tours and a street market",
    "speeches by local schoolchildren",
    "a choir performance and a tree planting",
    "a parade of vintage buses",
)
_BENEFITS = (
    "cut travel times in half",
    "create about four hundred local jobs",
    "supply clean water to twenty villages",
    "double the number of visitors to the town",
    "reduce the region's energy bills",
)
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")

MUSE_NEWS_QUESTIONS = (
    ("leader", "Who is the {role} of {org}?"),
    ("city", "In which town did {org} open the {project}?"),
    ("cost", "How much did the {project} cost?"),
    ("attendance", "How many residents attended the opening of the {project}?"),
    ("founder", "Who first proposed the {project}?"),
    ("critic", "Who chairs the {city} {group}?"),
    ("proposal_year", "In which year was the {project} first proposed?"),
    ("target_year", "By which year does {org} expect the {project} to {benefit}?"),
)


def _capitalize_words(text: str) -> str:
    return " ".join(word[0].upper() + word[1:] for word in text.split())


def _event(namer: Namer) -> dict:
    rng = namer.rng
    facility, purpose = rng.choice(_FACILITIES)
    year = rng.randint(2011, 2024)
    return {
        "city": namer.town(),
        "date": f"{rng.choice(MONTHS)} {rng.randint(1, 28)}, {year}",
        "weekday": rng.choice(_WEEKDAYS),
        "org": f"the {namer.word(2)} {rng.choice(_ORG_KINDS)}",
        "project": f"{namer.word(2)} {_capitalize_words(facility)}",
        "facility": facility,
        "purpose": purpose,
        "verb": rng.choice(_LEAD_VERBS),
        "cost": f"{rng.randint(12, 480)} million crowns",
        "years": str(rng.randint(2, 9)),
        "quote": rng.choice(_QUOTES),
        "leader": namer.person(),
        "role": rng.choice(_ROLES),
        "attendance": str(rng.randint(3, 95) * 100),
        "activity": rng.choice(_ACTIVITIES),
        "proposal_year": str(year - rng.randint(6, 20)),
        "founder": namer.person(),
        "founder_job": rng.choice(_FORMER_JOBS),
        "critic": namer.person(),
        "group": rng.choice(_GROUPS),
        "overrun": str(rng.randint(11, 64)),
        "benefit": rng.choice(_BENEFITS),
        "target_year": str(year + rng.randint(2, 8)),
        "phase2_place": namer.town(),
    }


def _sentences(e: dict) -> list[str]:
    org = e["org"][0].upper() + e["org"][1:]
    return [
        f"{e['city']}, {e['date']}. {org} {e['verb']} the {e['project']}, a {e['facility']} {e['purpose']}, "
        f"on {e['weekday']}.",
        f"The {e['facility']} cost {e['cost']} and took {e['years']} years to build, according to {e['org']}.",
        f'"{e["quote"]}," said {e["leader"]}, the {e["role"]} of {e["org"]}, at the opening ceremony.',
        f"About {e['attendance']} residents attended the event, which included {e['activity']}.",
        f"The project was first proposed in {e['proposal_year']} by {e['founder']}, a former {e['founder_job']} "
        f"from {e['city']}.",
        f"Not everyone welcomed the {e['facility']}. {e['critic']}, who chairs the {e['city']} {e['group']}, "
        f"said the budget had grown by {e['overrun']} percent since construction began.",
        f"{org} said it expects the {e['project']} to {e['benefit']} by {e['target_year']}.",
        f"A second phase of the work is planned for the neighboring town of {e['phase2_place']}.",
    ]


def _qa_pairs(e: dict, rng: random.Random) -> list[dict]:
    """Every knowledge question about an event (answers copied from the article), in a seeded order."""
    pairs = [{"question": q.format(**e), "answer": e[fact]} for fact, q in MUSE_NEWS_QUESTIONS]
    rng.shuffle(pairs)
    return pairs


def make_news(
    n_forget: int,
    n_retain: int,
    n_holdout: int,
    seed: int,
    qa_per_article: int = 2,
    icl_pairs: int = 3,
    prefix_sentences: int = 3,
) -> dict[str, dict[str, list[dict]]]:
    """Invented news in the MUSE-News layout: {subset: {split: records}} (see muse.MUSE_LAYOUT).

    Forget, retain and holdout articles describe disjoint events (no shared town, organization or person).
    verbmem prompts are the first `prefix_sentences` sentences of each forget article, gt the rest
    (article = prompt + " " + gt);
    knowmem asks `qa_per_article` questions per article (answers appear verbatim in it), and the ICL splits
    hold `icl_pairs` further questions from the same articles that the test questions do not ask.
    """
    if min(n_forget, n_holdout) < 1 or n_retain < 2:
        raise DataError("make_news needs n_forget >= 1, n_holdout >= 1 and n_retain >= 2 (retain1 and retain2)")
    if not 1 <= qa_per_article < len(MUSE_NEWS_QUESTIONS):
        raise DataError(f"qa_per_article must be between 1 and {len(MUSE_NEWS_QUESTIONS) - 1}, not {qa_per_article}")
    rng = random.Random(f"news-{seed}")
    namer = Namer(rng)
    events = {
        name: [_event(namer) for _ in range(n)]
        for name, n in (("forget", n_forget), ("retain", n_retain), ("holdout", n_holdout))
    }
    articles = {name: [" ".join(_sentences(e)) for e in group] for name, group in events.items()}

    def knowmem(group: list[dict]) -> tuple[list[dict], list[dict]]:
        test, spare = [], []
        for e in group:
            pairs = _qa_pairs(e, rng)
            test += pairs[:qa_per_article]
            spare += pairs[qa_per_article:]
        return test, rng.sample(spare, min(icl_pairs, len(spare)))

    forget_qa, forget_icl = knowmem(events["forget"])
    retain_qa, retain_icl = knowmem(events["retain"])
    verbmem = []
    for e in events["forget"]:
        sentences = _sentences(e)
        verbmem.append({"prompt": " ".join(sentences[:prefix_sentences]), "gt": " ".join(sentences[prefix_sentences:])})
    half = (n_retain + 1) // 2

    def texts(items: list[str]) -> list[dict]:
        return with_index({"text": text} for text in items)

    return {
        "knowmem": {
            "forget_qa": with_index(forget_qa),
            "retain_qa": with_index(retain_qa),
            "forget_qa_icl": with_index(forget_icl),
            "retain_qa_icl": with_index(retain_icl),
        },
        "verbmem": {"forget": with_index(verbmem)},
        "privleak": {
            "forget": texts(articles["forget"]),
            "retain": texts(articles["retain"]),
            "holdout": texts(articles["holdout"]),
        },
        "raw": {
            "forget": texts(articles["forget"]),
            "retain1": texts(articles["retain"][:half]),
            "retain2": texts(articles["retain"][half:]),
            "holdout": texts(articles["holdout"]),
        },
    }
