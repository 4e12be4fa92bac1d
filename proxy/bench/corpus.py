"""Synthetic memories and queries for ``bench recall``: fact-like sentences from templates x vocabulary.

Deterministic for a given seed. The sentences read like what extraction stores ("User's sister Mia
lives in Lyon."), the queries like what a user asks an assistant; both share vocabulary, so
dense and BM25 retrieval have real work to do.
"""

from __future__ import annotations

import random


def _words(text: str) -> list[str]:
    return [w.strip() for w in text.split(",")]


VOCAB: dict[str, list[str]] = {
    "name": _words(
        "Mia, Noah, Ava, Liam, Zoe, Omar, Lena, Yuki, Ines, Mateo, Priya, Jonas, Sara, Felix, Aisha, Tom, Nora, Karim, Elif, Hugo"
    ),
    "relation": _words(
        "sister, brother, mother, father, daughter, son, partner, cousin, colleague, neighbour, friend, manager"
    ),
    "city": _words(
        "Berlin, Lyon, Porto, Oslo, Kyoto, Austin, Denver, Lisbon, Vienna, Seoul, Dublin, Quito, Nairobi, Perth, Turin, Ghent"
    ),
    "country": _words(
        "Japan, Portugal, Norway, Kenya, Chile, Canada, Iceland, Vietnam, Morocco, Greece, Peru, Finland"
    ),
    "allergen": _words("peanuts, shellfish, penicillin, gluten, lactose, pollen, cats, latex, sesame, kiwi"),
    "drink": _words("green tea, espresso, oat lattes, matcha, black coffee, rooibos, kombucha, hot chocolate"),
    "job": _words("nurse, architect, data engineer, teacher, pharmacist, carpenter, pilot, lawyer, chef, designer"),
    "org": _words("hospital, startup, school, bakery, bank, museum, library, law firm, clinic, studio"),
    "language": _words("Portuguese, Japanese, Norwegian, Spanish, Korean, Italian, Greek, Turkish, Dutch, Swahili"),
    "instrument": _words("cello, guitar, piano, drums, violin, saxophone, ukulele, trumpet"),
    "pet": _words("dog, cat, rabbit, parrot, tortoise, hamster"),
    "month": _words("January, February, March, April, May, June, July, August, September, October, November, December"),
    "weekday": _words("Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday"),
    "food": _words("mushrooms, pork, cilantro, olives, anchovies, tofu, lamb, eggplant, beets, okra"),
    "tool": _words("Vim, Emacs, VS Code, PyCharm, Neovim, Zed, Helix, Sublime Text"),
    "task": _words("code review, note taking, budgeting, journaling, photo editing, scheduling"),
    "color": _words("red, blue, green, silver, black, white, orange"),
    "car": _words("hatchback, estate car, pickup, van, scooter, convertible"),
    "team": _words("Benfica, Ajax, Celtic, Napoli, Boca Juniors, Galatasaray, Rapid Wien"),
    "sport": _words("football, rugby, cricket, hockey, tennis, handball"),
    "topic": _words(
        "sleep science, stoicism, urban gardening, sourdough baking, astronomy, chess openings, bird watching"
    ),
    "place": _words("river, canal, beach, park, harbour, lake"),
    "distance": _words("5k, 10k, half-marathon, 3-mile loop, 8 km route"),
    "condition": _words("migraines, asthma, back pain, insomnia, hay fever"),
    "project": _words("Atlas, Beacon, Cobalt, Delta, Ember, Falcon, Granite, Harbor"),
}

FACTS = [
    "User's {relation} {name} lives in {city}.",
    "User is allergic to {allergen}.",
    "User drinks {drink} every morning before work.",
    "User works as a {job} at a {org} in {city}.",
    "User is learning {language} before a trip to {country} in {month}.",
    "User plays the {instrument} with friends every {weekday}.",
    "User's {pet} is called {name}.",
    "User runs a {distance} along the {place} on {weekday} mornings.",
    "User is planning to visit {city} in {month}.",
    "User does not eat {food}.",
    "User switched from {tool} to another editor for {task}.",
    "User's {relation} has a birthday in {month}.",
    "User's project {project} is due at the end of {month}.",
    "User gets {condition} and avoids late {weekday} meetings.",
    "User volunteers at a {org} in {city} on {weekday}s.",
    "User drives a {color} {car}.",
    "User supports {team} and watches every {sport} match.",
    "User wants to read more about {topic}.",
    "User's {relation} {name} is a {job}.",
    "User moved from {city} to {country} last {month}.",
    "User is saving money for a {color} {car}.",
    "User takes the {pet} to the {place} every {weekday}.",
]

#: What ``remember`` is timed with: new facts in another phrasing than the corpus, so most are created.
NOTES = [
    "Last {weekday} the user mentioned that {name} recommended a {drink} bar near the {place} in {city}.",
    "The user said their {relation} is starting a new job as a {job} in {country} this {month}.",
    "The user asked to be reminded about the {project} review with {name} every {weekday}.",
    "The user bought a second-hand {instrument} and wants lessons in {language}.",
    "After seeing a doctor about {condition}, the user stopped eating {food} for a while.",
    "The user's {pet} stayed with {name} in {city} during the {sport} tournament.",
]

QUERIES = [
    "Can you recommend a restaurant in {city} for dinner with my {relation}?",
    "What should I pack for a week in {country} in {month}?",
    "Help me plan my training for a {distance} this {month}.",
    "Any tips for practising the {instrument} when I'm tired?",
    "How do I cook something nice without {food}?",
    "Write a short birthday message for {name}.",
    "Which {tool} plugins help with {task}?",
    "Suggest a weekend activity in {city} I could do with my {pet}.",
    "What's a good book about {topic} for a beginner?",
    "I feel a bit off today, could it be my {condition} again?",
    "Draft an email to my manager about the {project} deadline.",
    "How do I say thank you to my {relation} in {language}?",
    "Is it worth switching to a {car} for my commute?",
    "When does the {team} season start?",
    "Plan a relaxed {weekday} for me after work.",
    "What breakfast goes well with {drink}?",
    "Find me a quiet cafe near the {place} in {city}.",
    "Can you remind me what I told you about {name}?",
]


def _fill(template: str, rng: random.Random) -> str:
    out = template
    while "{" in out:
        start = out.index("{")
        end = out.index("}", start)
        out = out[:start] + rng.choice(VOCAB[out[start + 1 : end]]) + out[end + 1 :]
    return out


def _distinct(templates: list[str], count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[str] = []
    attempts = 0
    while len(out) < count:
        attempts += 1
        if attempts > count * 50:
            raise ValueError(f"cannot make {count} distinct sentences from these templates")
        text = _fill(templates[len(out) % len(templates)] if attempts <= count else rng.choice(templates), rng)
        if text not in seen:
            seen.add(text)
            out.append(text)
    rng.shuffle(out)
    return out


def fact_pool(count: int, seed: int = 7) -> list[str]:
    """``count`` distinct fact-like memories."""
    return _distinct(FACTS, count, seed)


def notes(count: int, seed: int = 13) -> list[str]:
    """``count`` distinct new facts to ``remember``."""
    return _distinct(NOTES, count, seed)


def queries(count: int, seed: int = 11) -> list[str]:
    """``count`` distinct user messages."""
    return _distinct(QUERIES, count, seed)
