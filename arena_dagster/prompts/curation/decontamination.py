"""The decontamination steps: no kept prompt may copy a test item, in any user turn.

  decontam_exact      a user turn equals a test item (case- and punctuation-insensitive)
  decontam_ngram      a user turn shares a verbatim word n-gram with a test item
  decontam_minhash    a user turn is a near-verbatim copy of a test item (MinHash Jaccard)
  decontam_embedding  a user turn is among a test item's `decontam_top_k` nearest pool texts
                      with cosine >= `decontam_embedding_threshold` (MiniLM embeddings)
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from arena_dagster.prompts.curation.normalize import canonical, normalize, texts_of, words
from arena_dagster.prompts.curation.similarity import NearIndex, shingles
from arena_dagster.prompts.curation.state import CurationRun


def against_texts(against: Sequence[str | dict]) -> list[str]:
    """The distinct non-empty user-side texts of the test items, in order."""
    texts: list[str] = []
    for position, item in enumerate(against):
        texts.extend(t for t in texts_of(item, f"against[{position}]") if normalize(t))
    return list(dict.fromkeys(texts))


def decontaminate(run: CurationRun, test_texts: list[str]) -> None:
    """Drop every alive row one of whose user turns copies one of `test_texts`."""
    # Every distinct user turn of the surviving rows, and which rows contain it.
    turn_rows: dict[str, list[int]] = {}
    for index in run.alive:
        for turn in run.convs[index].user_turns:
            if normalize(turn):
                turn_rows.setdefault(turn, []).append(index)
    gone: set[int] = set()

    def flag(turn: str, step: str, reason: str, matched: str) -> None:
        for index in turn_rows[turn]:
            if index not in gone:
                gone.add(index)
                run.drop(index, step, reason, matched)

    def live_turns() -> list[str]:
        return [t for t, idx in turn_rows.items() if any(i not in gone for i in idx)]

    if run.config.decontam_exact:
        started = time.perf_counter()
        test_keys: dict[str, str] = {}
        for text in test_texts:
            test_keys.setdefault(canonical(text), text)
        for turn in live_turns():
            key = canonical(turn)
            if key in test_keys:
                flag(turn, "decontam_exact", "a user turn equals a test item", test_keys[key])
        run.timed("decontam_exact", started)

    if run.config.decontam_ngram:
        started = time.perf_counter()
        n = run.config.decontam_ngram
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
        run.timed("decontam_ngram", started)

    if run.config.decontam_minhash_threshold is not None:
        started = time.perf_counter()
        index_test = NearIndex(run.config.decontam_minhash_threshold, run.hasher())
        for position, text in enumerate(test_texts):
            index_test.add(position, shingles(text, run.config.shingle, run.config.shingle_size))
        for turn in live_turns():
            hit = index_test.best(shingles(turn, run.config.shingle, run.config.shingle_size))
            if hit is not None:
                flag(turn, "decontam_minhash", f"near-verbatim copy of a test item (Jaccard {hit[1]:.3f})",
                     test_texts[hit[0]])
        run.timed("decontam_minhash", started)

    if run.config.decontam_embedding_threshold is not None:
        started = time.perf_counter()
        turns = live_turns()
        if turns:
            pool = run.embed(turns)
            tests = run.embed_tests(test_texts)
            k = min(run.config.decontam_top_k, len(turns))
            best: dict[int, tuple[float, int]] = {}
            for start in range(0, len(test_texts), 256):
                sims = tests[start : start + 256] @ pool.T
                top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
                for row, columns in enumerate(top):
                    for column in columns:
                        score = float(sims[row, column])
                        if score >= run.config.decontam_embedding_threshold and score > best.get(int(column), (-1.0, 0))[0]:
                            best[int(column)] = (score, start + row)
            for column in sorted(best):
                score, test_position = best[column]
                flag(turns[column], "decontam_embedding",
                     f"cosine {score:.3f} >= {run.config.decontam_embedding_threshold} with a test item (top-{k})",
                     test_texts[test_position])
        run.timed("decontam_embedding", started)

    run.alive = [i for i in run.alive if i not in gone]
