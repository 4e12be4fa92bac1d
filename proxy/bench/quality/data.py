"""The data of ``bench quality``: users' memories, written as the extraction worker writes them, and
questions whose answer depends on some of them.

Each user has facts (``key: (kind, text)``) that questions need, and distractors (durable but beside
every question). A question names the facts it needs and how it reaches them:

- ``paraphrase``: says the same thing in other words ("Which orchestrator do we use?" for Kubernetes);
- ``implied``: needs a constraint or preference the question never mentions (a dinner recipe for a
  vegetarian, a cappuccino for someone lactose intolerant, a trip for someone afraid of flying,
  answers in a preferred form);
- ``combined``: needs two facts at once (a family day out: where the user lives and the child's age);
- ``follow-up``: a short question after something the user said earlier in the conversation ("What's
  the best way to get there?" after "a city break in Rome"), which names what it is about;
- ``topic-switch``: a question that changes the subject after something the user said before.

Questions alternate between the ``dev`` half (even positions per user, for tuning) and the ``test``
half (odd positions, reported, never tuned on).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Split = Literal["dev", "test"]

# user -> (facts {key: (kind, text)}, distractors [(kind, text)], questions [(how, question, [fact keys])])
USERS: dict[str, tuple[dict[str, tuple[str, str]], list[tuple[str, str]], list[tuple[str, str, list[str]]]]] = {
    "maya": (
        {
            "veg": ("constraint", "User is vegetarian and does not eat fish either"),
            "lactose": ("constraint", "User is lactose intolerant"),
            "k8s": ("fact", "User's company is Acme Corp and they run Kubernetes in production"),
            "python": ("preference", "User prefers code examples in Python"),
            "concise": ("preference", "User wants short answers without long introductions"),
            "lisbon": ("identity", "User lives in Lisbon, Portugal"),
            "flying": ("constraint", "User is afraid of flying"),
            "daughter": ("identity", "User has a daughter named Inês who is 6 years old"),
            "run": ("plan", "User is training for a half marathon in October"),
            "knee": ("constraint", "User had knee surgery in March and is still doing physiotherapy"),
            "budget": ("plan", "User is saving for a house deposit and wants to keep spending low"),
            "postgres": ("fact", "User's team uses PostgreSQL 15 as their main database"),
        },
        [
            ("fact", "User watched the new Dune film last weekend"),
            ("preference", "User's favourite colour is green"),
            ("fact", "User bought a new mechanical keyboard"),
            ("fact", "User's brother works as an architect in Porto"),
            ("fact", "User used to play the cello at school"),
            ("fact", "User's laptop is a ThinkPad X1 Carbon"),
        ],
        [
            ("paraphrase", "Which orchestrator do we use?", ["k8s"]),
            ("implied", "Suggest a dinner recipe for tonight", ["veg"]),
            ("implied", "Can I have a cappuccino after lunch?", ["lactose"]),
            ("combined", "Plan a weekend trip to Rome for me", ["flying", "lisbon"]),
            ("implied", "Show me how to read a CSV file", ["python"]),
            ("implied", "Explain how database indexes work", ["concise"]),
            ("paraphrase", "What should I get my kid for her birthday?", ["daughter"]),
            ("combined", "Give me a leg workout for this week", ["knee", "run"]),
            ("implied", "Is it a good idea to buy a new car now?", ["budget"]),
            ("paraphrase", "How do I tune slow queries in our database?", ["postgres"]),
            ("combined", "Where could we go for a family day out this Saturday?", ["lisbon", "daughter"]),
        ],
    ),
    "tom": (
        {
            "wheel": ("constraint", "User uses a wheelchair"),
            "nuts": ("constraint", "User has a severe peanut allergy and carries an EpiPen"),
            "diabetes": ("constraint", "User has type 2 diabetes"),
            "leeds": ("identity", "User lives in Leeds"),
            "retired": ("identity", "User is a retired history teacher"),
            "wife": ("identity", "User's wife Margaret loves gardening"),
            "eyes": ("constraint", "User has poor eyesight and prefers large print or audio"),
            "dog": ("identity", "User has an elderly Labrador called Biscuit"),
            "anniversary": ("plan", "User's 40th wedding anniversary is on 14 June"),
            "train": ("preference", "User prefers travelling by train rather than driving"),
            "imperial": ("preference", "User wants measurements in imperial units"),
            "book": ("plan", "User is writing a book about Yorkshire in the Second World War"),
        },
        [
            ("fact", "User watched the snooker final on Sunday"),
            ("fact", "User's neighbour is called Dave"),
            ("preference", "User's favourite biscuit is a ginger nut"),
            ("fact", "User used to own a red Ford Escort"),
            ("fact", "User's old school closed in 2015"),
            ("fact", "User thinks the local bus timetable changed recently"),
        ],
        [
            ("implied", "Recommend a museum I could visit next week", ["wheel"]),
            ("implied", "What snacks should I bring to a party?", ["nuts"]),
            ("combined", "Suggest a dessert I could bake", ["diabetes", "nuts"]),
            ("combined", "What should I get my wife for our anniversary?", ["wife", "anniversary"]),
            ("implied", "How much flour is 500 grams?", ["imperial"]),
            ("implied", "Any good book recommendations for me?", ["eyes"]),
            ("combined", "How should I get to London for the weekend?", ["train", "leeds"]),
            ("paraphrase", "My dog ate some chocolate, what should I do?", ["dog"]),
            ("paraphrase", "Find me sources for my research project", ["book"]),
            ("implied", "Which hotels would suit me in Edinburgh?", ["wheel"]),
            ("combined", "What can I cook for a dinner party with friends?", ["nuts", "diabetes"]),
        ],
    ),
    "priya": (
        {
            "vegan": ("constraint", "User is vegan"),
            "gluten": ("constraint", "User has coeliac disease and must avoid gluten"),
            "berlin": ("identity", "User moved to Berlin in January for a new job"),
            "pm": ("identity", "User works as a product manager at a fintech startup"),
            "german": ("plan", "User is learning German and is at A2 level"),
            "tables": ("preference", "User likes answers formatted as tables when comparing options"),
            "migraine": ("constraint", "User gets migraines from bright screens and strong perfume"),
            "cycle": ("fact", "User commutes by bicycle every day"),
            "sister": ("plan", "User's sister Anika is getting married in Jaipur in December"),
            "pregnant": ("constraint", "User is 5 months pregnant"),
            "bigquery": ("fact", "User's analytics stack is BigQuery and Looker"),
            "sleep": ("constraint", "User has trouble sleeping and avoids caffeine after noon"),
        },
        [
            ("preference", "User's favourite series is The Office"),
            ("fact", "User owns a monstera plant"),
            ("fact", "User once visited Iceland"),
            ("fact", "User's phone is a Pixel 8"),
            ("fact", "User bought a new yoga mat"),
            ("fact", "User's flatmate is from Spain"),
        ],
        [
            ("combined", "Recommend a bakery I could try this weekend", ["gluten", "vegan"]),
            ("combined", "What should I pack for my trip to India?", ["sister", "pregnant"]),
            ("implied", "Compare three budgeting apps for me", ["tables"]),
            ("paraphrase", "Which language course should I take next?", ["german"]),
            ("combined", "Suggest a quick protein-rich lunch", ["vegan", "gluten"]),
            ("implied", "Can I drink an espresso at 4 pm?", ["sleep"]),
            ("implied", "Which exercises are safe for me right now?", ["pregnant"]),
            ("paraphrase", "How do I build a dashboard for our churn metrics?", ["bigquery"]),
            ("implied", "What rain gear do I need for getting to work?", ["cycle"]),
            ("paraphrase", "Any tips for reducing headaches while working?", ["migraine"]),
            ("paraphrase", "What wedding gift is appropriate for family?", ["sister"]),
        ],
    ),
    "luis": (
        {
            "chef": ("identity", "User is a professional chef running a taqueria in Mexico City"),
            "shellfish": ("constraint", "User is allergic to shellfish"),
            "warfarin": ("constraint", "User takes the blood thinner warfarin"),
            "hiking": ("preference", "User loves hiking and climbed Iztaccíhuatl last year"),
            "english": ("preference", "User's first language is Spanish and he prefers answers in simple English"),
            "sons": ("identity", "User has two sons aged 10 and 13"),
            "back": ("constraint", "User has chronic lower back pain"),
            "japan": ("plan", "User is planning a trip to Japan in April"),
            "seasick": ("constraint", "User gets seasick on boats"),
            "cash": ("plan", "User's restaurant only accepts cash and he wants to add card payments"),
            "america": ("preference", "User supports the football club Club América"),
            "alcohol": ("constraint", "User does not drink alcohol"),
        },
        [
            ("preference", "User's favourite movie is Coco"),
            ("fact", "User painted his kitchen blue"),
            ("fact", "User's cousin lives in Houston"),
            ("fact", "User has a collection of vinyl records"),
            ("fact", "User's car is a white Nissan"),
            ("fact", "User learned to swim at 30"),
        ],
        [
            ("combined", "What should I eat in Tokyo?", ["shellfish", "japan"]),
            ("implied", "Can I take ibuprofen for a headache?", ["warfarin"]),
            ("implied", "Suggest a cocktail for a party", ["alcohol"]),
            ("implied", "Which mattress should I buy?", ["back"]),
            ("implied", "Should we book a whale-watching tour?", ["seasick"]),
            ("combined", "How do I start taking card payments at my business?", ["cash", "chef"]),
            ("combined", "Plan a weekend activity for the whole family", ["sons", "hiking"]),
            ("implied", "Explain how compound interest works", ["english"]),
            ("combined", "Recommend a seafood paella recipe for my menu", ["shellfish", "chef"]),
            ("paraphrase", "Which trails would suit me outside the city?", ["hiking"]),
            ("paraphrase", "How did my team do in the last match?", ["america"]),
        ],
    ),
    "anna": (
        {
            "medicine": ("identity", "User is studying medicine at Karolinska Institutet"),
            "adhd": ("preference", "User has ADHD and prefers step-by-step instructions"),
            "stockholm": ("identity", "User lives in Stockholm"),
            "halal": ("constraint", "User eats only halal food"),
            "asthma": ("constraint", "User has asthma"),
            "cat": ("identity", "User has a cat named Luna"),
            "licence": ("constraint", "User does not have a driving licence"),
            "budget": ("constraint", "User lives on a student budget of about 9,000 SEK a month"),
            "exam": ("plan", "User's anatomy exam is on 12 May"),
            "violin": ("fact", "User plays violin in a student orchestra"),
            "mac": ("fact", "User uses a MacBook Air with macOS"),
            "swedish": ("preference", "User prefers replies in Swedish"),
        },
        [
            ("fact", "User watched a documentary about octopuses"),
            ("preference", "User's favourite band is ABBA"),
            ("fact", "User's mother is a dentist"),
            ("fact", "User bought a green winter coat"),
            ("fact", "User once ran a 5k race"),
            ("fact", "User's flatmate plays video games at night"),
        ],
        [
            ("combined", "How should I revise over the next few weeks?", ["exam", "adhd"]),
            ("implied", "How do I get to IKEA this weekend?", ["licence"]),
            ("combined", "Recommend a burger place nearby", ["halal", "stockholm"]),
            ("implied", "Is it okay for me to go running in cold air?", ["asthma"]),
            ("implied", "Which note-taking app is best for my laptop?", ["mac"]),
            ("implied", "Can I afford a trip to Paris?", ["budget"]),
            ("implied", "Which houseplants are safe for my flat?", ["cat"]),
            ("paraphrase", "Help me prepare for my concert", ["violin"]),
            ("implied", "Explain the Krebs cycle", ["adhd"]),
            ("paraphrase", "What part-time job fits around my degree?", ["medicine"]),
            ("implied", "Write a short birthday message for a friend", ["swedish"]),
        ],
    ),
    "ken": (
        {
            "brooklyn": ("identity", "User lives in Brooklyn, New York"),
            "trader": ("identity", "User works as a bond trader at a bank"),
            "keto": ("constraint", "User follows a ketogenic diet"),
            "pressure": ("constraint", "User has high blood pressure and limits salt"),
            "twins": ("identity", "User has twin daughters aged 3"),
            "colour": ("constraint", "User is red-green colour-blind"),
            "parents": ("identity", "User's parents live in Osaka and speak only Japanese"),
            "subway": ("fact", "User sold his car and gets around by subway"),
            "golf": ("preference", "User plays golf most Sunday mornings"),
            "sources": ("preference", "User wants answers to cite their sources"),
            "aisle": ("preference", "User always wants an aisle seat on flights"),
            "cpap": ("constraint", "User has sleep apnea and uses a CPAP machine"),
        },
        [
            ("fact", "User's favourite coffee shop closed last month"),
            ("fact", "User read a biography of Steve Jobs"),
            ("fact", "User's neighbour has a loud dog"),
            ("fact", "User repainted his bedroom"),
            ("fact", "User went to high school in Sacramento"),
            ("fact", "User watched the Yankees game"),
        ],
        [
            ("implied", "Book me a flight to Osaka", ["aisle"]),
            ("combined", "What should I order at a Japanese restaurant?", ["keto", "pressure"]),
            ("implied", "Which chart colours work best for my slides?", ["colour"]),
            ("combined", "How do I get to JFK airport?", ["subway", "brooklyn"]),
            ("paraphrase", "What gifts could I bring my mom and dad?", ["parents"]),
            ("combined", "What's a good weekend activity with the kids?", ["twins", "brooklyn"]),
            ("combined", "Is ramen a healthy choice for me?", ["pressure", "keto"]),
            ("implied", "What should I pack for a week-long trip?", ["cpap"]),
            ("paraphrase", "How will rising interest rates affect my work?", ["trader"]),
            ("implied", "Summarize the latest research on intermittent fasting", ["sources"]),
            ("paraphrase", "Plan my Sunday morning", ["golf"]),
        ],
    ),
}


#: user -> [(what the user said earlier in the conversation, the follow-up question, fact keys)]: the
#: question alone says little, the conversation says what it is about.
FOLLOW_UPS: dict[str, list[tuple[str, str, str, list[str]]]] = {
    "maya": [
        ("topic-switch", "Thanks, that CSV snippet worked.", "Suggest a dinner recipe for tonight, please", ["veg"]),
        (
            "follow-up",
            "I'm thinking about a city break in Rome next month.",
            "What's the best way to get there?",
            ["flying"],
        ),
        (
            "follow-up",
            "My knee has been bothering me again lately.",
            "Can you suggest a routine for tomorrow?",
            ["knee"],
        ),
    ],
    "tom": [
        (
            "topic-switch",
            "The crossword today was too easy.",
            "Which café would suit me for a coffee with friends?",
            ["wheel"],
        ),
        ("follow-up", "We're throwing a birthday party for the grandchildren.", "What food should I make?", ["nuts"]),
        ("follow-up", "Margaret and I want a day out in York.", "Which places should we visit?", ["wheel"]),
    ],
    "priya": [
        (
            "topic-switch",
            "The sprint review went well today.",
            "Which cake should I order for my birthday?",
            ["vegan", "gluten"],
        ),
        (
            "follow-up",
            "My team is going out for dinner on Friday.",
            "Which restaurant would you pick?",
            ["vegan", "gluten"],
        ),
        (
            "follow-up",
            "I've been feeling very tired in the afternoons.",
            "Should I have a coffee?",
            ["sleep", "pregnant"],
        ),
    ],
    "luis": [
        (
            "topic-switch",
            "My son scored a goal at school today!",
            "Can I have a glass of wine to celebrate?",
            ["alcohol"],
        ),
        (
            "follow-up",
            "I'm updating the menu at the restaurant.",
            "Any ideas for a new starter?",
            ["chef", "shellfish"],
        ),
        ("follow-up", "I hurt my wrist yesterday and it is swollen.", "What painkiller can I take?", ["warfarin"]),
    ],
    "anna": [
        ("topic-switch", "I finished my lab report at last.", "What should I cook for dinner?", ["halal"]),
        ("follow-up", "I want to visit my aunt in Uppsala on Saturday.", "How do I get there?", ["licence"]),
        ("follow-up", "The spring pollen season is starting.", "Is it fine to train outdoors?", ["asthma"]),
    ],
    "ken": [
        (
            "topic-switch",
            "The markets were quiet this morning.",
            "Which seat should I pick on my next flight?",
            ["aisle"],
        ),
        (
            "follow-up",
            "I'm flying to Osaka to see my family in May.",
            "What should I bring with me?",
            ["parents", "cpap"],
        ),
        ("follow-up", "Dinner with clients tonight at a steakhouse.", "What should I order?", ["pressure", "keto"]),
    ],
}


@dataclass(frozen=True)
class Fact:
    user: str
    key: str  # "" for a distractor
    kind: str
    text: str


@dataclass(frozen=True)
class Question:
    user: str
    how: str  # paraphrase, implied, combined, follow-up
    text: str
    needs: tuple[str, ...]  # fact keys
    split: Split
    earlier: tuple[str, ...] = ()  # what the user said before in the conversation, oldest first

    @property
    def conversation(self) -> list[dict[str, str]]:
        """The request's messages: the earlier user turns (each answered) and the question."""
        messages: list[dict[str, str]] = []
        for said in self.earlier:
            messages += [{"role": "user", "content": said}, {"role": "assistant", "content": "I see."}]
        return [*messages, {"role": "user", "content": self.text}]


def facts() -> list[Fact]:
    """Every memory of every user: the facts questions need, then the distractors."""
    out: list[Fact] = []
    for user, (needed, distractors, _) in USERS.items():
        out.extend(Fact(user, key, kind, text) for key, (kind, text) in needed.items())
        out.extend(Fact(user, "", kind, text) for kind, text in distractors)
    return out


def questions(split: Split | None = None) -> list[Question]:
    """The questions of ``split`` (both halves when None)."""
    out: list[Question] = []
    for user, (_, _, asked) in USERS.items():
        for index, (how, text, needs) in enumerate(asked):
            half: Split = "dev" if index % 2 == 0 else "test"
            if split is None or split == half:
                out.append(Question(user, how, text, tuple(needs), half))
        for index, (how, said, text, needs) in enumerate(FOLLOW_UPS.get(user, [])):
            half = "dev" if index % 2 == 0 else "test"
            if split is None or split == half:
                out.append(Question(user, how, text, tuple(needs), half, (said,)))
    return out
