"""The curation settings (`prompts.curation:` of a profile): one frozen dataclass and its presets.

The steps that use them are in arena_dagster/prompts/curation/; the schema builds its
`prompts.curation` section from this dataclass's fields.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

# Cosine similarity of MiniLM (all-MiniLM-L6-v2, normalized) embeddings above which a pool
# text counts as a paraphrase of a test item. Calibrated on tests/data/mtbench_paraphrases.jsonl:
# 40 hand-written paraphrases of MT-Bench first turns (light to heavy rewording) and 38
# hand-written non-paraphrases (same topic or template, different task), each scored by
# its highest cosine against all 160 MT-Bench turns:
#   paraphrases: min 0.773, median 0.92; non-paraphrases: max 0.722 (a recursive C++
#   Fibonacci question vs an iterative Python one), median 0.39;
#   threshold 0.70: 40/40 caught, 1/38 false; 0.75: 40/40, 0/38; 0.80: 39/40, 0/38.
# On 2,949 real ShareGPT first turns the highest cosine to any MT-Bench turn was 0.698
# (a three-dice probability question vs MT-Bench's two-dice one): none removed at 0.75.
# The threshold is absolute (not relative to the pool), so a clean prompt survives in a pool
# of any size.
DEFAULT_DECONTAM_EMBEDDING_THRESHOLD = 0.75


class CurationError(ValueError):
    """Bad curation input or configuration; the message names the row or the field."""


@dataclass(frozen=True)
class CurationConfig:
    min_chars: int = 10
    max_chars: int | None = 100_000
    exact_dedup: bool = True
    # The paper's rule: two instructions sharing their first 10 characters are duplicates.
    prefix_dedup_chars: int | None = 10
    near_dedup: bool = True
    near_dedup_threshold: float = 0.8
    num_perm: int = 128
    shingle: Literal["word", "char"] = "word"
    shingle_size: int = 3
    language: str | None = "en"
    language_min_confidence: float = 0.5
    semantic_dedup_threshold: float | None = None
    dedup_previous: bool = True
    decontam_exact: bool = True
    decontam_minhash_threshold: float | None = 0.8
    decontam_ngram: int | None = 13
    decontam_embedding_threshold: float | None = DEFAULT_DECONTAM_EMBEDDING_THRESHOLD
    decontam_top_k: int = 5
    # Texts per forward pass: on CPU a turn cost 17% less CPU in batches of 16 than of 64 (smaller products; less padding).
    embed_batch_size: int = 16
    seed: int = 1

    def __post_init__(self) -> None:
        def check(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise CurationError(f"CurationConfig.{name} must be {rule}, got {getattr(self, name)!r}")

        check(isinstance(self.min_chars, int) and self.min_chars >= 0, "min_chars", "an int >= 0")
        check(self.max_chars is None or (isinstance(self.max_chars, int) and self.max_chars > self.min_chars),
              "max_chars", "null or an int above min_chars")
        check(self.prefix_dedup_chars is None or (isinstance(self.prefix_dedup_chars, int) and self.prefix_dedup_chars > 0),
              "prefix_dedup_chars", "None or an int > 0")
        check(0.0 < self.near_dedup_threshold <= 1.0, "near_dedup_threshold", "in (0, 1]")
        check(isinstance(self.num_perm, int) and self.num_perm >= 16, "num_perm", "an int >= 16")
        check(self.shingle in ("word", "char"), "shingle", "'word' or 'char'")
        check(isinstance(self.shingle_size, int) and self.shingle_size >= 1, "shingle_size", "an int >= 1")
        check(self.language is None or (isinstance(self.language, str) and len(self.language) == 2),
              "language", "None or a two-letter ISO 639-1 code")
        check(0.0 <= self.language_min_confidence <= 1.0, "language_min_confidence", "in [0, 1]")
        for name in ("semantic_dedup_threshold", "decontam_minhash_threshold", "decontam_embedding_threshold"):
            value = getattr(self, name)
            check(value is None or 0.0 < value <= 1.0, name, "None or in (0, 1]")
        check(self.decontam_ngram is None or (isinstance(self.decontam_ngram, int) and self.decontam_ngram >= 2),
              "decontam_ngram", "None or an int >= 2")
        check(isinstance(self.decontam_top_k, int) and self.decontam_top_k >= 1, "decontam_top_k", "an int >= 1")

    @classmethod
    def from_dict(cls, settings: dict[str, Any] | None) -> "CurationConfig":
        """Build from a profile mapping; `preset` picks a base, other keys override it."""
        settings = dict(settings or {})
        preset = settings.pop("preset", "paper")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise CurationError(f"unknown curation settings {unknown} (known: {sorted(known)})")
        return replace(cls.preset(preset), **settings)

    @classmethod
    def preset(cls, name: str) -> "CurationConfig":
        if name not in PRESETS:
            raise CurationError(f"unknown curation preset {name!r} (known: {sorted(PRESETS)})")
        return PRESETS[name]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, CurationConfig] = {
    # The paper's curation for real user prompts.
    "paper": CurationConfig(),
    # Short templated instructions ("Add 12 and 35"): inputs that differ by one word are
    # different prompts, so no prefix rule, no embedding or MinHash decontamination
    # (MiniLM and shingles put two instances of one template close together), and a
    # near-duplicate test that only surface variants pass. Measured on 2872 distinct items
    # of the skills generator + 600 generated variants (467 case/space/punctuation ones):
    #   word 3-shingles, Jaccard >= 0.95: 0 distinct items removed, all 467 surface variants
    #     removed ("Please ..." rewordings survive);
    #   char 3-shingles >= 0.95: also 0/469 here, but one changed number at the end of a
    #     long prompt ("...: 12 45 33 7 19" vs "... 18") scores 0.96, so char shingles are out;
    #   word 2-shingles >= 0.8: 548/600 variants but 1 distinct item removed;
    #   char 4-shingles >= 0.85: 52 distinct items removed.
    "templated": CurationConfig(
        prefix_dedup_chars=None,
        near_dedup_threshold=0.95,
        shingle="word",
        shingle_size=3,
        language=None,
        decontam_minhash_threshold=None,
        decontam_embedding_threshold=None,
        decontam_ngram=None,
    ),
}
