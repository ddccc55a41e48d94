"""Utility sets of the synthetic dataset: real-author and world-fact questions a small instruct model can
answer, with wrong answers of the same kind (like TOFU's real_authors / world_facts_perturbed). Part of the
synthetic dataset's generated text: changing it means bumping `synthetic.GENERATOR_VERSION`."""

from __future__ import annotations

import random

from llm_unlearn.data.io import with_index

N_UTILITY_PERTURBED = 3

# ---- utility sets: facts a small instruct model knows (our own wording) ----

_REAL_AUTHORS = (
    ("Who wrote the novel 'Moby-Dick'?", "Herman Melville"),
    ("Which writer created the detective Sherlock Holmes?", "Arthur Conan Doyle"),
    ("Who is the author of 'War and Peace'?", "Leo Tolstoy"),
    ("Who wrote 'The Adventures of Tom Sawyer'?", "Mark Twain"),
    ("Which author wrote the Harry Potter books?", "J.K. Rowling"),
    ("Who wrote the tragedy 'Hamlet'?", "William Shakespeare"),
    ("Who is the author of 'Don Quixote'?", "Miguel de Cervantes"),
    ("Which novelist wrote 'The Old Man and the Sea'?", "Ernest Hemingway"),
    ("Who wrote the novel 'Oliver Twist'?", "Charles Dickens"),
    ("Who is the author of 'Frankenstein'?", "Mary Shelley"),
    ("Which writer is the author of 'The Hobbit'?", "J.R.R. Tolkien"),
    ("Who wrote the novella 'Animal Farm'?", "George Orwell"),
    ("Which American author wrote 'The Great Gatsby'?", "F. Scott Fitzgerald"),
    ("Who wrote the novel 'Jane Eyre'?", "Charlotte Bronte"),
    ("Which French writer wrote the novel 'Les Miserables'?", "Victor Hugo"),
    ("Which Russian novelist wrote 'Crime and Punishment'?", "Fyodor Dostoevsky"),
    ("Who wrote the poem 'The Divine Comedy'?", "Dante Alighieri"),
    ("Who wrote 'One Hundred Years of Solitude'?", "Gabriel Garcia Marquez"),
    ("Which author wrote 'To Kill a Mockingbird'?", "Harper Lee"),
    ("Who wrote the novel 'Emma'?", "Jane Austen"),
    ("Which ancient Greek poet is credited with 'The Odyssey'?", "Homer"),
    ("Who wrote the mystery 'Murder on the Orient Express'?", "Agatha Christie"),
    ("Who is the author of 'The Catcher in the Rye'?", "J.D. Salinger"),
    ("Which writer wrote 'Brave New World'?", "Aldous Huxley"),
    ("Who wrote the vampire novel 'Dracula'?", "Bram Stoker"),
    ("Who wrote 'Alice's Adventures in Wonderland'?", "Lewis Carroll"),
    ("Who is the author of 'The Little Prince'?", "Antoine de Saint-Exupery"),
    ("Which writer from Nigeria wrote the novel 'Things Fall Apart'?", "Chinua Achebe"),
    ("Who wrote the story 'The Metamorphosis'?", "Franz Kafka"),
    ("Who is the author of 'Wuthering Heights'?", "Emily Bronte"),
    ("Which author wrote 'Fahrenheit 451'?", "Ray Bradbury"),
    ("Who wrote 'The Call of the Wild'?", "Jack London"),
)

# (question, answer, pool of wrong answers of the same kind)
_CAPITALS = ("Tokyo", "Paris", "Rome", "Cairo", "Ottawa", "Berlin", "Madrid", "Nairobi", "Moscow", "Lisbon", "Oslo")
_WORLD_FACTS = (
    ("Which city is the capital of Japan?", "Tokyo", _CAPITALS),
    ("Which city is the capital of France?", "Paris", _CAPITALS),
    ("Which city is the capital of Italy?", "Rome", _CAPITALS),
    ("Which city is the capital of Egypt?", "Cairo", _CAPITALS),
    ("Which city is the capital of Canada?", "Ottawa", _CAPITALS + ("Toronto", "Vancouver")),
    ("Which city is the capital of Germany?", "Berlin", _CAPITALS),
    ("Which city is the capital of Spain?", "Madrid", _CAPITALS),
    ("Which city is the capital of Kenya?", "Nairobi", _CAPITALS),
    ("Which city is the capital of Russia?", "Moscow", _CAPITALS),
    ("Which city is the capital of Norway?", "Oslo", _CAPITALS),
    (
        "Which gas do plants take in from the air to make food?",
        "carbon dioxide",
        ("oxygen", "nitrogen", "helium", "hydrogen"),
    ),
    ("Which planet is closest to the Sun?", "Mercury", ("Venus", "Mars", "Jupiter", "Saturn", "Neptune")),
    ("Which planet is called the Red Planet?", "Mars", ("Venus", "Mercury", "Jupiter", "Saturn", "Neptune")),
    ("Which is the largest planet in the Solar System?", "Jupiter", ("Venus", "Mars", "Mercury", "Earth", "Neptune")),
    ("What is the chemical symbol of gold?", "Au", ("Ag", "Fe", "Pb", "Cu", "Gd")),
    ("What is the chemical symbol of sodium?", "Na", ("So", "Sd", "K", "Ca", "Ne")),
    ("How many legs does a spider have?", "eight", ("six", "four", "ten", "twelve")),
    ("How many continents are there?", "seven", ("five", "six", "eight", "nine")),
    ("At how many degrees Celsius does water boil at sea level?", "100", ("90", "50", "212", "120")),
    ("At how many degrees Celsius does water freeze?", "0", ("10", "32", "-10", "4")),
    ("What is the hardest natural material?", "diamond", ("quartz", "granite", "iron", "marble")),
    (
        "Which organ pumps blood around the human body?",
        "the heart",
        ("the liver", "the lungs", "the kidneys", "the brain"),
    ),
    (
        "Which is the largest ocean on Earth?",
        "the Pacific Ocean",
        ("the Atlantic Ocean", "the Indian Ocean", "the Arctic Ocean"),
    ),
    (
        "Who painted the Mona Lisa?",
        "Leonardo da Vinci",
        ("Vincent van Gogh", "Pablo Picasso", "Claude Monet", "Rembrandt"),
    ),
    (
        "Who developed the theory of relativity?",
        "Albert Einstein",
        ("Isaac Newton", "Charles Darwin", "Marie Curie", "Niels Bohr"),
    ),
    (
        "Who proposed evolution by natural selection?",
        "Charles Darwin",
        ("Isaac Newton", "Albert Einstein", "Gregor Mendel", "Louis Pasteur"),
    ),
    (
        "Which is the largest animal alive today?",
        "the blue whale",
        ("the African elephant", "the giraffe", "the polar bear", "the great white shark"),
    ),
    ("In which country are the pyramids of Giza?", "Egypt", ("Mexico", "Greece", "Peru", "Turkey")),
    ("How many days does a leap year have?", "366", ("365", "364", "360", "367")),
    ("Which land animal is the fastest?", "the cheetah", ("the lion", "the horse", "the gazelle", "the greyhound")),
    ("What is the common name of H2O?", "water", ("salt", "vinegar", "oil", "sugar")),
)


def make_utility_sets(seed: int) -> dict[str, list[dict]]:
    """Real-author and world-fact QA: question, answer, perturbed_answer (3 wrong answers of the same kind), index."""
    rng = random.Random(f"utility-{seed}")
    author_names = [answer for _, answer in _REAL_AUTHORS]
    real_authors = [
        {
            "question": question,
            "answer": answer,
            "perturbed_answer": rng.sample([a for a in author_names if a != answer], N_UTILITY_PERTURBED),
        }
        for question, answer in _REAL_AUTHORS
    ]
    world_facts = [
        {
            "question": question,
            "answer": answer,
            "perturbed_answer": rng.sample([v for v in pool if v != answer], N_UTILITY_PERTURBED),
        }
        for question, answer, pool in _WORLD_FACTS
    ]
    return {"real_authors": with_index(real_authors), "world_facts": with_index(world_facts)}
