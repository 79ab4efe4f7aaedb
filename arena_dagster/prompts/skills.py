"""The embedded default's task suite: instruction families whose answers can be checked.

Every item carries its reference answer, so a deterministic verifier can score any model's
answer 1-10 without an LLM judge. Answer distributions are balanced on purpose (count
answers spread over 0-3, word lengths over 3-9, last letters over many letters): with a
skewed distribution a tiny model looks good by always guessing the majority answer.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

from arena_dagster.profile_schema.training import FAMILIES  # the family names are settings (models.*.families)


# Every template starts with a fixed instruction word (near-duplicates edit the text around
# it, which never changes the answer) and ends with the task's input after a colon: tiny
# models find the input by its distance from the end of the prompt.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "reverse_word": (
        "Reverse the word: {word}",
        "Spell backwards: {word}",
        "Write in reverse order: {word}",
        "Reverse the letters of: {word}",
    ),
    "uppercase": (
        "Convert to upper case: {phrase}",
        "Write in capital letters: {phrase}",
        "Uppercase this text: {phrase}",
        "Rewrite in all caps: {phrase}",
    ),
    "sort_numbers": (
        "Sort ascending: {numbers}",
        "Order from smallest to largest: {numbers}",
        "Sort from low to high: {numbers}",
        "Arrange in increasing order: {numbers}",
    ),
    "add": (
        "Add the numbers: {a} + {b}",
        "What is the sum of: {a} + {b}",
        "Compute: {a} + {b}",
        "Find the total of: {a} + {b}",
    ),
    "count_letter": (
        "Count the letter {letter} in: {phrase}",
        "How many times does {letter} appear in: {phrase}",
        "Number of {letter} letters in: {phrase}",
        "Tell me how many {letter} are in: {phrase}",
    ),
    "acronym": (
        "Make an acronym from: {phrase}",
        "Give the acronym of: {phrase}",
        "Form an acronym for: {phrase}",
        "Write the initials in capitals: {phrase}",
    ),
    "last_letter": (
        "What is the last letter of: {word}",
        "Give the final letter of: {word}",
        "Which letter ends the word: {word}",
        "Last letter of: {word}",
    ),
    "max_number": (
        "What is the largest number in: {numbers}",
        "Find the maximum of: {numbers}",
        "Which is biggest: {numbers}",
        "Pick the largest of these numbers: {numbers}",
    ),
    "min_number": (
        "What is the smallest number in: {numbers}",
        "Find the minimum of: {numbers}",
        "Which is smallest: {numbers}",
        "Pick the smallest of these numbers: {numbers}",
    ),
    "word_length": (
        "How many letters are in: {word}",
        "Count the letters of: {word}",
        "What is the length of the word: {word}",
        "Letter count of: {word}",
    ),
}

WORDS: tuple[str, ...] = tuple(
    """
    ant ape arm art bag bat bed bee box boy bus cab cap car cat cow cup day dog ear egg elf
    eye fan fig fox fun gap gem hat hen hip hut ice ink jam jar jet joy key kid kit lab leg
    lip log map mat mix mud net nut oak owl pan pen pet pig pin pot rag ram rat rug sea sky
    sun tea tip toe top toy van web wig yak zip zoo
    atom bake band bark bell belt bird boat bold bone book boot bowl cake calm card cart
    cave chef city clay coat code coin cold cook corn crab crow cube dark deer desk dish
    dove drum duck dust echo face farm fish flag frog gift girl glow goat gold golf hand
    harp hawk herb hill home hook horn jazz kite lake lamp leaf lime lion loaf lock mask
    milk mint moon moth nest note oven park pear pink plum pond quiz rain road rock roof
    rose ruby sail salt sand seed ship shoe silk snow sock soup star swan tent tide tree
    tube vase vest wave wind wolf yarn yoga zinc
    acorn alarm amber angel apple beach berry blank bloom brick brush cabin camel candy
    chair chalk charm chess cider cloud clown coral crane cream crown daisy dance dream
    eagle earth fairy feast flame flute forest frost ghost glass grape grass heart honey
    horse house igloo jelly jewel juice koala lemon light llama mango maple marsh melon
    money mouse music night noble ocean olive onion opera otter paint panda paper peach
    pearl piano pilot pizza plant poppy quilt radio raven river robin salad scarf shark
    sheep shell skate smile snake spice spoon storm sugar table tiger toast torch tulip
    uncle vapor wagon whale wheat world yacht zebra
    anchor banana basket beetle breeze bridge bucket butter candle carpet castle cheese
    cherry circle cookie copper cotton dragon feather flower forest garden ginger guitar
    hammer helmet island jacket jungle kettle kitten ladder lizard magnet marble meadow
    mirror monkey orange oyster pencil pepper pillow planet pocket puzzle rabbit rocket
    saddle salmon silver spider spring summer sunset tomato tunnel turtle violet walnut
    window winter yellow
    balloon blanket cabbage captain cartoon chicken compass cricket crystal dolphin
    freckle giraffe harvest jasmine kingdom lantern lettuce library mustard network
    octopus oatmeal orchard panther parrot pelican penguin pumpkin rainbow sparrow
    teacher thunder tornado trumpet vampire volcano weather whistle
    alphabet aquarium backpack blizzard blossom broccoli butterfly calendar cardinal
    chipmunk cinnamon daughter dinosaur elephant envelope firework flamingo hedgehog
    hospital kangaroo lavender mountain mushroom notebook painting peacock pineapple
    scorpion sunlight treasure umbrella vacation squirrel sandwich
    """.split()
)

_WORDS_BY_LENGTH: dict[int, tuple[str, ...]] = {}
for _word in WORDS:
    _WORDS_BY_LENGTH.setdefault(len(_word), ())
    _WORDS_BY_LENGTH[len(_word)] += (_word,)
_WORDS_BY_LAST: dict[str, tuple[str, ...]] = {}
for _word in WORDS:
    _WORDS_BY_LAST.setdefault(_word[-1], ())
    _WORDS_BY_LAST[_word[-1]] += (_word,)
# Last letters with enough words to sample from without the item becoming a lookup table.
_LAST_LETTERS = tuple(sorted(k for k, v in _WORDS_BY_LAST.items() if len(v) >= 4))

MIN_WORD_LEN = 3
MAX_WORD_LEN = 9


@dataclass(frozen=True)
class SkillItem:
    item_id: str
    family: str
    template_id: int
    prompt: str
    reference: str
    difficulty: int  # 0 (easiest) .. 10 (hardest), from input size within the family

    def as_dict(self) -> dict:
        return asdict(self)


class UnknownFamilyError(ValueError):
    pass


def item_id_for(family: str, prompt: str) -> str:
    """Content-derived id: the same prompt always gets the same id, across pools and test sets."""
    return f"{family}-{hashlib.sha256(prompt.encode()).hexdigest()[:12]}"


def _scale(value: float, low: float, high: float) -> int:
    if high <= low:
        return 0
    return max(0, min(10, round(10 * (value - low) / (high - low))))


def _word(rng: random.Random, min_len: int = MIN_WORD_LEN, max_len: int = MAX_WORD_LEN) -> str:
    length = rng.randint(min_len, max_len)
    while length not in _WORDS_BY_LENGTH:
        length = rng.randint(min_len, max_len)
    return rng.choice(_WORDS_BY_LENGTH[length])


def _phrase(rng: random.Random, n_words: int, max_len: int = 6) -> str:
    return " ".join(_word(rng, MIN_WORD_LEN, max_len) for _ in range(n_words))


# Each builder returns (template fields, reference, difficulty).
def _reverse_word(rng: random.Random) -> tuple[dict, str, int]:
    word = _word(rng, 3, 6)
    return {"word": word}, word[::-1], _scale(len(word), 3, 6)


def _uppercase(rng: random.Random) -> tuple[dict, str, int]:
    phrase = _phrase(rng, rng.randint(1, 2), max_len=5)
    return {"phrase": phrase}, phrase.upper(), _scale(len(phrase), 3, 11)


def _digits(rng: random.Random, count: int) -> list[int]:
    return rng.sample(range(10), count)


def _sort_numbers(rng: random.Random) -> tuple[dict, str, int]:
    numbers = _digits(rng, rng.randint(3, 5))
    return {"numbers": " ".join(map(str, numbers))}, " ".join(map(str, sorted(numbers))), _scale(len(numbers), 3, 5)


def _add(rng: random.Random) -> tuple[dict, str, int]:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    return {"a": a, "b": b}, str(a + b), _scale(a + b, 0, 18)


def _count_letter(rng: random.Random) -> tuple[dict, str, int]:
    target = rng.randint(0, 3)
    for _ in range(10_000):
        phrase = _phrase(rng, rng.randint(1, 2), max_len=7)
        letters = sorted(set(phrase.replace(" ", ""))) if target else sorted(set("abcdefghijklmnoprstuwy") - set(phrase))
        candidates = [c for c in letters if phrase.count(c) == target]
        if candidates:
            letter = rng.choice(candidates)
            return {"letter": letter, "phrase": phrase}, str(target), _scale(len(phrase) + 2 * target, 3, 21)
    raise RuntimeError(f"could not build a count_letter item with answer {target}")


def _acronym(rng: random.Random) -> tuple[dict, str, int]:
    phrase = _phrase(rng, rng.randint(2, 3), max_len=7)
    return {"phrase": phrase}, "".join(w[0] for w in phrase.split()).upper(), _scale(len(phrase), 7, 21)


def _last_letter(rng: random.Random) -> tuple[dict, str, int]:
    letter = rng.choice(_LAST_LETTERS)
    word = rng.choice(_WORDS_BY_LAST[letter])
    return {"word": word}, word[-1], _scale(len(word), 3, 9)


def _extreme(rng: random.Random, largest: bool) -> tuple[dict, str, int]:
    # The answer is drawn first, uniformly, so "9" (or "0") is not the usual answer.
    count = rng.randint(3, 6)
    answer = rng.randint(count - 1, 9) if largest else rng.randint(0, 10 - count)
    others = range(0, answer) if largest else range(answer + 1, 10)
    numbers = [answer, *rng.sample(others, count - 1)]
    rng.shuffle(numbers)
    return {"numbers": " ".join(map(str, numbers))}, str(answer), _scale(count, 3, 6)


def _word_length(rng: random.Random) -> tuple[dict, str, int]:
    word = _word(rng, MIN_WORD_LEN, MAX_WORD_LEN)
    return {"word": word}, str(len(word)), _scale(len(word), 3, 9)


_BUILDERS: dict[str, Callable[[random.Random], tuple[dict, str, int]]] = {
    "reverse_word": _reverse_word,
    "uppercase": _uppercase,
    "sort_numbers": _sort_numbers,
    "add": _add,
    "count_letter": _count_letter,
    "acronym": _acronym,
    "last_letter": _last_letter,
    "max_number": lambda rng: _extreme(rng, largest=True),
    "min_number": lambda rng: _extreme(rng, largest=False),
    "word_length": _word_length,
}


def _check_families(families: Sequence[str]) -> tuple[str, ...]:
    unknown = [f for f in families if f not in _BUILDERS]
    if unknown:
        raise UnknownFamilyError(f"unknown skill families {unknown} (known: {', '.join(FAMILIES)})")
    if not families:
        raise UnknownFamilyError("at least one skill family is needed")
    return tuple(families)


def make_item(family: str, rng: random.Random) -> SkillItem:
    _check_families([family])
    fields, reference, difficulty = _BUILDERS[family](rng)
    template_id = rng.randrange(len(TEMPLATES[family]))
    prompt = TEMPLATES[family][template_id].format(**fields)
    return SkillItem(item_id_for(family, prompt), family, template_id, prompt, reference, difficulty)


def make_items(n: int, *, seed: int, families: Sequence[str] | None = None) -> list[SkillItem]:
    """`n` items, balanced over `families` (round-robin, then shuffled); deterministic per seed.

    Items may repeat when a family's input space is small; callers wanting unique prompts
    deduplicate on `item_id` (curation does).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    chosen = _check_families(FAMILIES if families is None else list(families))
    rng = random.Random(f"skills-items-{seed}")
    items = [make_item(chosen[i % len(chosen)], rng) for i in range(n)]
    rng.shuffle(items)
    return items


_JUNK = ("hi", "ok?", "test", "help", "Reverse:", "Add:", "sort ??", "asdf", "...", "hmm", "What?", "1 2 3")


def _near_duplicate(prompt: str, rng: random.Random) -> str:
    """Same item, tiny surface change: never touches the task's input, so the answer holds."""
    edits = []
    first_space = prompt.find(" ")
    if first_space > 0:
        edits.append(prompt[:first_space] + "  " + prompt[first_space + 1 :])
    edits.append(prompt[0].lower() + prompt[1:])
    if prompt[-1] in ".?":
        edits.append(prompt[:-1])
    else:
        edits.append(prompt + ".")
    edits.append(prompt + " ")
    edits.append("Please " + prompt[0].lower() + prompt[1:])
    return rng.choice(edits)


def make_raw_pool(
    n: int,
    *,
    seed: int,
    exact_dup_rate: float = 0.08,
    near_dup_rate: float = 0.08,
    short_rate: float = 0.02,
) -> list[dict]:
    """`n` raw rows (source_id, family, prompt, reference, difficulty) as a scrape would give.

    About `exact_dup_rate` of the rows repeat an earlier row verbatim, `near_dup_rate`
    repeat one with a tiny wording/whitespace/punctuation change, and `short_rate` are
    truncated junk instructions under 10 characters: curation has to remove them.
    """
    for name, rate in (("exact_dup_rate", exact_dup_rate), ("near_dup_rate", near_dup_rate), ("short_rate", short_rate)):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {rate}")
    if exact_dup_rate + near_dup_rate + short_rate >= 1.0:
        raise ValueError("exact_dup_rate + near_dup_rate + short_rate must stay below 1")
    rng = random.Random(f"skills-pool-{seed}")
    n_exact, n_near, n_short = (round(n * r) for r in (exact_dup_rate, near_dup_rate, short_rate))
    n_unique = n - n_exact - n_near - n_short
    base = [
        {"family": it.family, "prompt": it.prompt, "reference": it.reference, "difficulty": it.difficulty}
        for it in make_items(n_unique, seed=seed)
    ]
    rows = list(base)
    if base:
        rows += [dict(rng.choice(base)) for _ in range(n_exact)]
        for _ in range(n_near):
            original = rng.choice(base)
            rows.append({**original, "prompt": _near_duplicate(original["prompt"], rng)})
        for _ in range(n_short):
            original = rng.choice(base)
            rows.append({**original, "prompt": rng.choice(_JUNK)})
    rng.shuffle(rows)
    return [{"source_id": f"raw-{seed}-{i:06d}", **row} for i, row in enumerate(rows)]
