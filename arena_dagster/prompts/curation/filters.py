"""The steps that judge a row alone: invalid, too_short, too_long, language."""

from __future__ import annotations

import time

from arena_dagster.profile_schema.curation import CurationError
from arena_dagster.prompts.curation.normalize import conversation_of, identify_language, normalize
from arena_dagster.prompts.curation.state import CurationRun

LANGUAGE_TARGET_FLOOR = 0.05


def keep_valid(run: CurationRun) -> None:
    """invalid: rows without a usable instruction; the others become the run's conversations."""
    started = time.perf_counter()
    for index, row in enumerate(run.rows):
        if not isinstance(row, dict):
            raise CurationError(f"row {index}: expected a dict, got {type(row).__name__}")
        try:
            conv = conversation_of(row, index)
        except CurationError as err:
            run.drop(index, "invalid", str(err))
            continue
        if not normalize(conv.instruction):
            run.drop(index, "invalid", "empty instruction")
            continue
        run.convs[index] = conv
        run.alive.append(index)
    run.timed("invalid", started)


def drop_by_length(run: CurationRun) -> None:
    """too_short (the instruction) and too_long (the whole conversation)."""
    config = run.config
    started = time.perf_counter()
    survivors = []
    for index in run.alive:
        length = len(normalize(run.convs[index].instruction))
        if length < config.min_chars:
            run.drop(index, "too_short", f"{length} characters < min_chars={config.min_chars}")
        else:
            survivors.append(index)
    run.alive = survivors
    run.timed("too_short", started)

    started = time.perf_counter()
    if config.max_chars is not None:
        survivors = []
        for index in run.alive:
            length = len(run.convs[index].instruction) + sum(len(content) for _role, content in run.convs[index].history)
            if length > config.max_chars:
                run.drop(index, "too_long", f"{length} characters > max_chars={config.max_chars}")
            else:
                survivors.append(index)
        run.alive = survivors
    run.timed("too_long", started)


def drop_other_languages(run: CurationRun) -> None:
    """language: confidently another language, and the target language all but excluded."""
    config = run.config
    if not config.language:
        return
    started = time.perf_counter()
    survivors = []
    for index in run.alive:
        top, top_p, probabilities = identify_language(run.convs[index].language_text)
        target_p = probabilities.get(config.language, 0.0)
        if top != config.language and top_p >= config.language_min_confidence and target_p < LANGUAGE_TARGET_FLOOR:
            run.drop(index, "language", f"identified as {top!r} (p={top_p:.2f}), p({config.language})={target_p:.3f}", top)
        else:
            survivors.append(index)
    run.alive = survivors
    run.timed("language", started)
