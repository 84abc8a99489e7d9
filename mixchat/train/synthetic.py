"""Dialogues the project writes from its own templates: memory across turns, what the model is, honest limits.

Why templates: the chat sources teach none of this. Persona chat makes the model claim a name, a job and a
dog called Buddy; nothing in the corpus asks it to repeat a fact the user gave two turns earlier; and no
source says "I don't know". Every sentence pattern here was written for mixchat; the only facts used are
the user's own (invented names, places, numbers) and the capitals read from the corpus's fact files.

Everything is chosen by hashes of a key (`stable_hash`), never by random state, so a rebuild is identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mixchat.train.corpus import Dialogue, stable_hash

# ---------------------------------------------------------------------------------------------------------
# Value pools. Training and held-out pools are disjoint, so a held-out recall dialogue asks for a value
# that no training recall dialogue ever used.

NAMES = (
    "Anna", "Ben", "Clara", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kira", "Leo",
    "Mina", "Nils", "Olga", "Pablo", "Quinn", "Rosa", "Sami", "Tara", "Umar", "Vera", "Wes", "Xenia", "Yusuf",
    "Zara", "Aiko", "Bruno", "Cora", "Diego", "Eva", "Felix", "Gina", "Hana", "Ivan", "Jade", "Karl", "Lena",
    "Marco", "Nadia", "Oscar", "Petra", "Raj", "Sara", "Theo", "Uma", "Viktor", "Wanda", "Yara", "Zoltan",
    "Amir", "Bea", "Cyril", "Dana", "Emil", "Fiona", "Gus", "Helga", "Igor", "Juno",
)  # fmt: skip
PET_NAMES = (
    "Rex", "Luna", "Max", "Bella", "Pepper", "Milo", "Coco", "Biscuit", "Shadow", "Daisy", "Oreo", "Ziggy",
    "Mochi", "Pickles", "Rusty", "Nala", "Toby", "Ginger", "Bruno", "Willow", "Peanut", "Socks", "Maple",
    "Jasper", "Olive", "Pumpkin", "Sunny", "Tiger", "Waffles", "Juniper",
)  # fmt: skip
PLACES = (
    "Oslo", "Lisbon", "Toronto", "Nairobi", "Melbourne", "Glasgow", "Kyoto", "Seville", "Krakow", "Denver",
    "Dublin", "Hanoi", "Bogota", "Cairo", "Vienna", "Manila", "Perth", "Austin", "Bristol", "Montreal",
    "Lyon", "Porto", "Tampere", "Leeds", "Osaka", "Quito", "Accra", "Bergen", "Utrecht", "Halifax",
    "Adelaide", "Naples", "Gdansk", "Cork", "Nagoya", "Seattle", "Geneva", "Leipzig", "Cusco", "Tucson",
)  # fmt: skip
HELDOUT_NAMES = ("Ottilie", "Bartek", "Soraya", "Fenwick", "Ingrid", "Lorcan", "Mirela", "Tobias", "Esther", "Caspian")
HELDOUT_PET_NAMES = ("Noodle", "Bramble", "Clover", "Figaro", "Truffle")
HELDOUT_PLACES = ("Tallinn", "Valparaiso", "Aberdeen", "Ljubljana", "Winnipeg", "Salzburg", "Da Nang", "Galway")
HELDOUT_NUMBERS = (17, 38, 53, 64, 86)
"""Numbers never used as values in training recall dialogues (training draws from 2-99 without these)."""
HELDOUT_SMALL = (7, 11)
"""Small numbers (ages of pets, counts) kept for held-out dialogues; training uses 2-12 without them."""

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                "twelve")  # fmt: skip

# ---------------------------------------------------------------------------------------------------------
# Cross-turn recall


@dataclass(frozen=True)
class Fact:
    """A thing the user tells, the later question about it, and the right answer. `value` must appear in
    the answer: the evaluation checks for it."""

    statement: str
    question: str
    answer: str
    value: str


PEOPLE = ("sister", "brother", "mother", "father", "aunt", "uncle", "cousin", "best friend", "grandmother",
          "grandfather", "neighbour", "boss", "daughter", "son", "wife", "husband", "flatmate", "teacher")  # fmt: skip
PETS = ("dog", "cat", "parrot", "rabbit", "hamster", "horse", "goldfish", "tortoise")


def _pick(pool: Sequence[str], key: str) -> str:
    return pool[stable_hash(key) % len(pool)]


def make_fact(kind: int, key: str, held: bool = False) -> Fact:
    """One fact of a kind (0-9), its values drawn from the training or the held-out pools by `key`."""
    names, pets, places = (HELDOUT_NAMES, HELDOUT_PET_NAMES, HELDOUT_PLACES) if held else (NAMES, PET_NAMES, PLACES)
    if held:
        number = HELDOUT_NUMBERS[stable_hash(key + ":n") % len(HELDOUT_NUMBERS)]
    else:
        numbers = [n for n in range(2, 100) if n not in HELDOUT_NUMBERS + HELDOUT_SMALL]
        number = numbers[stable_hash(key + ":n") % len(numbers)]
    person, pet = _pick(PEOPLE, key + ":p"), _pick(PETS, key + ":pet")
    name, pet_name, place = _pick(names, key + ":name"), _pick(pets, key + ":petname"), _pick(places, key + ":pl")
    smalls = HELDOUT_SMALL if held else [n for n in range(2, 13) if n not in HELDOUT_SMALL]
    small = smalls[stable_hash(key + ":s") % len(smalls)]
    small_text = NUMBER_WORDS[small] if stable_hash(key + ":w") % 2 else str(small)
    facts = [
        Fact(
            f"My {person} lives in {place}.", f"Where does my {person} live?", f"Your {person} lives in {place}.", place
        ),
        Fact(
            f"My {pet} is called {pet_name} and it is {small_text} years old.",
            f"What is my {pet}'s name?",
            f"Your {pet} is called {pet_name}.",
            pet_name,
        ),
        Fact(
            f"My {pet} is called {pet_name} and it is {small_text} years old.",
            f"How old is my {pet}?",
            f"Your {pet} is {small_text} years old.",
            small_text,
        ),
        Fact(f"My name is {name}.", "What is my name?", f"Your name is {name}.", name),
        Fact(
            f"My {person}'s name is {name}.", f"What is my {person} called?", f"Your {person} is called {name}.", name
        ),
        Fact(
            f"I grew up in {place}, but I live somewhere else now.",
            "Where did I grow up?",
            f"You grew up in {place}.",
            place,
        ),
        Fact(f"I am {number} years old.", "How old am I?", f"You are {number} years old.", str(number)),
        Fact(
            f"I'm flying to {place} next week.",
            "Where am I flying next week?",
            f"You're flying to {place} next week.",
            place,
        ),
        Fact(
            f"My flat is number {number} on this street.",
            "What number is my flat?",
            f"Your flat is number {number}.",
            str(number),
        ),
        Fact(
            f"I have {small_text} cousins and my {person} works in {place}.",
            f"Where does my {person} work?",
            f"Your {person} works in {place}.",
            place,
        ),
    ]
    return facts[kind % len(facts)]


RECALL_KINDS = 10

ACKS = (
    "Thanks for telling me.",
    "Got it, I'll remember that.",
    "That's nice to know.",
    "Okay, noted.",
    "Oh, how nice!",
    "I see. Tell me more if you like.",
)
FILLERS: tuple[tuple[str, str], ...] = (
    ("How is your day going?", "It's going well, thanks. How about yours?"),
    ("I had pasta for lunch.", "Pasta is a good choice. Did you make it yourself?"),
    ("It's raining here today.", "Rainy days are good for staying in with a book."),
    ("Do you like music?", "I like talking about it. What do you listen to?"),
    ("I'm a bit tired.", "Maybe a short break would help. Take it easy."),
    ("What should I cook tonight?", "A simple soup or a stir-fry is quick and tasty."),
    ("I started learning the guitar.", "That's great! Practising a little every day helps a lot."),
    ("My week was busy.", "Busy weeks are tiring. I hope the weekend is calmer."),
    ("Any tips for sleeping better?", "Going to bed at the same time every night helps many people."),
    ("I went for a long walk this morning.", "A morning walk is a lovely way to start the day."),
    ("Do you like films?", "I like hearing about them. What is your favourite?"),
    ("I'm thinking of painting my room.", "A new colour can make a room feel fresh. Which one are you thinking of?"),
    ("Work was stressful today.", "I'm sorry to hear that. Is there anything that would help you relax?"),
    ("I love autumn.", "Autumn is beautiful, with all the colours of the leaves."),
    ("I'm reading a mystery novel.", "Mysteries are fun. Do you have a guess about who did it?"),
    ("Thanks for chatting with me.", "You're welcome! I'm happy to chat."),
)


def recall_dialogue(kind: int, key: str, held: bool = False, fillers: int | None = None) -> tuple[Dialogue, Fact]:
    """Tell a fact, talk about other things for 1-3 turns (2 for held-out dialogues), then ask about it.

    The answer names the value again, so the model learns to copy it from the earlier turn; the fillers in
    between are the project's own small talk.
    """
    fact = make_fact(kind, key, held)
    n = fillers if fillers is not None else 1 + stable_hash(key + ":f") % 3
    start = stable_hash(key + ":fill")
    turns = [(fact.statement, ACKS[start % len(ACKS)])]
    turns += [FILLERS[(start + 7 * i) % len(FILLERS)] for i in range(n)]
    turns.append((fact.question, fact.answer))
    return Dialogue(turns, "recall"), fact


def recall_dialogues(n: int, repeat: int) -> list[Dialogue]:
    """`n` training recall dialogues for one repeat (values from the training pools only)."""
    return [recall_dialogue(i % RECALL_KINDS, f"recall:{repeat}:{i}")[0] for i in range(n)]


def heldout_recall() -> list[tuple[Dialogue, Fact]]:
    """The 20 evaluation dialogues: two of each kind, values from the held-out pools, two fillers each."""
    return [recall_dialogue(i % RECALL_KINDS, f"heldout-recall:{i}", held=True, fillers=2) for i in range(20)]


# ---------------------------------------------------------------------------------------------------------
# What the model is

IDENTITY_QUESTIONS = (
    "Who are you?", "What are you?", "Are you a robot?", "Are you human?", "Are you a real person?",
    "Are you an AI?", "What is your name?", "What's your name?", "Who made you?", "Who created you?",
    "Tell me about yourself.", "What kind of program are you?", "Are you a bot?", "Are you alive?",
    "Introduce yourself.", "who are you", "are you a person?", "What are you, exactly? A chatbot?",
)  # fmt: skip
"""Taught phrasings. The evaluation's three rephrasings (heldout.IDENTITY_PROMPTS) are not among them."""
IDENTITY_ANSWERS = (
    "I'm the built-in model of mixchat: a small chat model trained by the mixchat project. I'm not a person.",
    "I'm a small language model that comes with mixchat, a terminal chat app. I'm a computer program, not a "
    "human.",
    "I'm mixchat's built-in chat model, a small computer program. I only speak English, and I only know what "
    "was in my training data.",
    "I'm a small chat model built into mixchat. I'm software, not a person, and I know only a little: everyday "
    "chat, what common English words mean and some facts such as capitals.",
)  # fmt: skip
LIMIT_QUESTIONS: tuple[tuple[str, str], ...] = (
    ("Do you speak French?", "No, I only speak English. I was trained on English text only."),
    ("Can you speak Spanish?", "No, sorry. I'm a small model that only knows English."),
    ("What languages do you speak?", "Only English. I'm a small model, trained on English text only."),
    ("Hablas español?", "Sorry, I only understand English."),
    ("What do you know?", "Not much: everyday chat, the meanings of common English words and some facts such "
     "as capitals of countries. Nothing beyond my training data."),
    ("Can you look something up on the internet?", "No, I can't. I have no internet connection; I only know "
     "what was in my training data."),
    ("Do you have feelings?", "No. I'm a small computer program that predicts text; I don't feel anything."),
    ("Do you have a family?", "No. I'm the built-in mixchat model, a computer program, so I have no family."),
    ("Where do you live?", "I don't live anywhere: I'm a small chat model running on your computer inside "
     "mixchat."),
    ("How smart are you?", "Not very. I'm a small model, so I often get things wrong. Please check anything "
     "important."),
)  # fmt: skip


def identity_dialogues(repeat: int) -> list[Dialogue]:
    """Each identity question once, answered truly, and each limit question once; some followed by chat."""
    out: list[Dialogue] = []
    for i, q in enumerate(IDENTITY_QUESTIONS):
        h = stable_hash(f"identity:{repeat}:{i}")
        turns = [(q, IDENTITY_ANSWERS[h % len(IDENTITY_ANSWERS)])]
        if h % 3 == 0:
            turns.append(FILLERS[(h >> 8) % len(FILLERS)])
        elif h % 3 == 1:
            turns.append(LIMIT_QUESTIONS[(h >> 8) % len(LIMIT_QUESTIONS)])
        out.append(Dialogue(turns, "identity"))
    for i, (q, a) in enumerate(LIMIT_QUESTIONS):
        h = stable_hash(f"limits:{repeat}:{i}")
        turns = [FILLERS[h % len(FILLERS)], (q, a)] if h % 2 else [(q, a)]
        out.append(Dialogue(turns, "identity"))
    return out


# ---------------------------------------------------------------------------------------------------------
# Honest refusals: code, maths beyond small sums, news

LANGUAGES = ("Python", "JavaScript", "C", "Java", "Rust", "Go", "SQL", "Bash")
CODE_TASKS = ("reverses a string", "sorts a list of numbers", "reads a file", "checks if a number is prime",
              "counts the words in a sentence", "finds the largest item in a list")  # fmt: skip
CODE_QUESTIONS = (
    "Write a {lang} function that {task}.", "Can you write me some {lang} code that {task}?",
    "How do I write a program in {lang} that {task}?", "Show me {lang} code that {task}.",
    "My {lang} code doesn't work. Can you fix it?", "Can you help me debug my {lang} program?",
)  # fmt: skip
CODE_ANSWERS = (
    "Sorry, I can't help with code. I'm a small chat model and I never learnt {lang} or any other programming "
    "language.",
    "I can't write or fix {lang} code: I'm a small chat model that was not trained on programming. A larger "
    "model or the {lang} documentation would help you more.",
)  # fmt: skip
BIG_MATHS = (
    "What is {a} times {b}?", "What is {a} multiplied by {b}?", "What's {a} divided by {c}?",
    "What is the square root of {a}{b}?", "What is {a} to the power of {c}?", "Solve {c}x + {a} = {b}.",
    "What is {c} percent of {a}{b}?", "Can you calculate {a}{b} minus {b}{c}?", "What's {a}{c} plus {b}{a}?",
)  # fmt: skip
MATHS_ANSWERS = (
    "I can only do small sums, like 7 plus 5. For this one, please use a calculator.",
    "Sorry, that is beyond me. I'm a small chat model and can only add and subtract small numbers. A calculator "
    "will get it right.",
)  # fmt: skip
NEWS_QUESTIONS = (
    "What's the latest news?", "What happened in the world today?", "Who won the match last night?",
    "What's the weather like today?", "Who won the election?", "What is the price of gold today?",
    "Is there any news about the stock market?", "What day is it today?", "What time is it?",
    "What are people talking about this week?", "Who is the current president?", "Any big news today?",
)  # fmt: skip
NEWS_ANSWERS = (
    "I don't know. I have no news and no connection to the internet; I only know what was in my training data, "
    "and that is not up to date.",
    "I can't tell you that: I'm a small model with no access to news, the date or the internet.",
)  # fmt: skip


def small_sum(key: str) -> tuple[str, str]:
    """A sum or difference of numbers up to 20, answered: the maths the model may do."""
    h = stable_hash(key)
    a, b = 1 + h % 20, 1 + (h >> 8) % 20
    if (h >> 16) % 3 == 0:
        a, b = max(a, b), min(a, b)
        q = ("What is {a} minus {b}?", "What's {a} take away {b}?")[(h >> 20) % 2].format(a=a, b=b)
        return q, f"{a} minus {b} is {a - b}."
    q = ("What is {a} plus {b}?", "What's {a} + {b}?", "How much is {a} and {b}?")[(h >> 20) % 3].format(a=a, b=b)
    return q, f"{a} plus {b} is {a + b}."


def refusal_dialogues(repeat: int) -> list[Dialogue]:
    """Code, big maths and news questions with honest refusals, and small sums answered."""
    out: list[Dialogue] = []
    for i, q in enumerate(CODE_QUESTIONS):
        for j, task in enumerate(CODE_TASKS):
            h = stable_hash(f"code:{repeat}:{i}:{j}")
            lang = LANGUAGES[h % len(LANGUAGES)]
            out.append(Dialogue([(q.format(lang=lang, task=task), CODE_ANSWERS[(h >> 8) % 2].format(lang=lang))],
                                "refusal"))  # fmt: skip
    for i, q in enumerate(BIG_MATHS):
        for j in range(4):
            h = stable_hash(f"maths:{repeat}:{i}:{j}")
            a, b, c = 13 + h % 87, 13 + (h >> 8) % 87, 3 + (h >> 16) % 9
            turns = [(q.format(a=a, b=b, c=c), MATHS_ANSWERS[(h >> 24) % 2])]
            if j % 2:
                turns.insert(0, small_sum(f"sum:{repeat}:{i}:{j}"))
            out.append(Dialogue(turns, "refusal"))
    for i, q in enumerate(NEWS_QUESTIONS):
        h = stable_hash(f"news:{repeat}:{i}")
        out.append(Dialogue([(q, NEWS_ANSWERS[h % 2])], "refusal"))
    out += [Dialogue([small_sum(f"sums:{repeat}:{i}")], "refusal") for i in range(24)]
    return out


# ---------------------------------------------------------------------------------------------------------
# Capitals: drilled from the corpus's facts, and "I don't know" for places not in the data

CAPITAL_QUESTIONS = (
    "What is the capital of {x}?", "What's the capital of {x}?", "Which city is the capital of {x}?",
    "Do you know the capital of {x}?", "capital of {x}?", "Tell me the capital of {x}.",
)  # fmt: skip
NEXT_CAPITAL_QUESTIONS = ("And {x}?", "What about {x}?", "And the capital of {x}?", "How about {x}?")
CAPITAL_ANSWERS = ("The capital of {x} is {y}.", "{y} is the capital of {x}.")
UNKNOWN_ANSWERS = (
    "I don't know the capital of {x}. It isn't in my training data.",
    "Sorry, I don't know. {x} is not a place I have any facts about.",
    "I'm not sure. I have no facts about {x}, so I would only be guessing.",
)  # fmt: skip

_SYLLABLES = ("ka", "lor", "ven", "tra", "mi", "dos", "bel", "ru", "xan", "por", "eth", "gal", "ori", "sul",
              "dan", "vel", "mar", "ta", "qui", "zen", "bro", "lin", "ost", "vy")  # fmt: skip
_ENDINGS = ("ia", "land", "stan", "ova", "ania", "istan", "ea", "onia")


def invented_country(i: int) -> str:
    """A made-up country name (two syllables and an ending), for "I don't know" answers: no such place is
    in any data, so the honest answer is always that the model does not know."""
    h = stable_hash(f"invented:{i}")
    name = _SYLLABLES[h % 24] + _SYLLABLES[(h >> 8) % 24] + _ENDINGS[(h >> 16) % 8]
    return name.capitalize()


def capital_dialogues(pairs: Sequence[tuple[str, str]], repeat: int, unknown: int = 120) -> list[Dialogue]:
    """Every (country, capital) pair of the fact files asked in the project's phrasings, 1-3 per dialogue,
    regrouped per repeat; plus `unknown` questions about invented countries answered "I don't know", some
    of them between real ones so the model must tell the two apart in one conversation."""
    order = sorted(pairs, key=lambda p: stable_hash(f"cap:{repeat}:{p[0]}"))
    out: list[Dialogue] = []
    i = 0
    while i < len(order):
        h = stable_hash(f"capgroup:{repeat}:{order[i][0]}")
        n = 1 + h % 3
        turns: list[tuple[str, str]] = []
        for j, (x, y) in enumerate(order[i : i + n]):
            qs = CAPITAL_QUESTIONS if j == 0 else NEXT_CAPITAL_QUESTIONS
            q = qs[(h >> (4 + j)) % len(qs)].format(x=x)
            a = CAPITAL_ANSWERS[(h >> (8 + j)) % 2].format(x=x, y=y)
            turns.append((q, a))
        if h % 4 == 0:
            x = invented_country(repeat * 10_000 + i)
            turns.append((NEXT_CAPITAL_QUESTIONS[h % 4].format(x=x), UNKNOWN_ANSWERS[(h >> 12) % 3].format(x=x)))
        out.append(Dialogue(turns, "capitals"))
        i += n
    for k in range(unknown):
        x = invented_country(repeat * 10_000 + 5_000 + k)
        h = stable_hash(f"unknown:{repeat}:{k}")
        q = CAPITAL_QUESTIONS[h % len(CAPITAL_QUESTIONS)].format(x=x)
        out.append(Dialogue([(q, UNKNOWN_ANSWERS[(h >> 8) % 3].format(x=x))], "capitals"))
    return out
