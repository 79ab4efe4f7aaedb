"""`curate`: every step in the order of STEPS, over one run's shared state (see the package's docstring)."""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Sequence

from arena_dagster.profile_schema.curation import CurationConfig
from arena_dagster.prompts.curation.decontamination import against_texts, decontaminate
from arena_dagster.prompts.curation.dedup import drop_exact, drop_near, drop_previous, drop_semantic
from arena_dagster.prompts.curation.filters import drop_by_length, drop_other_languages, keep_valid
from arena_dagster.prompts.curation.similarity import EmbedFn, embed_test_set, embed_texts
from arena_dagster.prompts.curation.state import CurationResult, CurationRun


def curate(
    rows: Sequence[dict],
    *,
    config: CurationConfig | None = None,
    against: Sequence[str | dict] = (),
    previous: Sequence[str | dict] = (),
    embed: EmbedFn | None = None,
    embed_tests: EmbedFn | None = None,
) -> CurationResult:
    """Run every step on `rows` (kept in input order; the first of duplicates survives).

    `against`: test-set items (strings, or rows with `prompt`/`messages`/`turns`) that no kept
    prompt may copy. `previous`: earlier rounds' prompts that no kept prompt may repeat.
    `embed`: embedding function (defaults to MiniLM), loaded only when a step needs it. `embed_tests`: the one
    for the test set (defaults to `embed` when given, else MiniLM's cached vectors: `embed_test_set`).
    """
    config = config or CurationConfig()
    if embed_tests is None and embed is None:
        embed_tests = partial(embed_test_set, batch_size=config.embed_batch_size)
    run = CurationRun(rows, config, embed or partial(embed_texts, batch_size=config.embed_batch_size), embed_tests)
    keep_valid(run)
    drop_by_length(run)
    drop_other_languages(run)
    drop_exact(run)
    drop_near(run)
    drop_semantic(run)
    drop_previous(run, previous)
    test_texts = against_texts(against)
    if test_texts and run.alive:
        decontaminate(run, test_texts)
    return run.result()


def repeats_of_previous(rows: Sequence[dict], previous: Sequence[str | dict], config: CurationConfig) -> CurationResult:
    """The `previous_rounds` step alone: which of `rows` (already curated) repeat a prompt of `previous`.

    Rows that passed `curate` together pass its other steps again as a subset (a duplicate of a
    subset's row would have been a duplicate in the whole), so only the step against `previous`
    can remove any; the costly checks (language, embeddings, decontamination) are switched off.
    """
    only = replace(config, min_chars=0, language=None, exact_dedup=False, prefix_dedup_chars=None,
                   semantic_dedup_threshold=None)
    return curate(rows, config=only, previous=previous)
