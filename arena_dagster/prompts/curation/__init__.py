"""The paper's prompt curation: clean, deduplicate, decontaminate (slicing into rounds: `prompts/slicing.py`).

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

One module per kind of step: `filters.py` (invalid, too_short, too_long, language), `dedup.py`
(exact, prefix, near, semantic, previous rounds), `decontamination.py`; `normalize.py` and
`similarity.py` are the text forms and the indexes they compare with, `state.py` what the
steps of one run share, and `pipeline.py` runs them in order.
"""

from arena_dagster.profile_schema.curation import CurationConfig, CurationError
from arena_dagster.prompts.curation.normalize import canonical, conversation_of, normalize, words
from arena_dagster.prompts.curation.pipeline import curate, repeats_of_previous
from arena_dagster.prompts.curation.similarity import embed_texts
from arena_dagster.prompts.curation.state import STEPS, CurationResult

__all__ = [
    "STEPS", "CurationConfig", "CurationError", "CurationResult", "canonical", "conversation_of", "curate", "embed_texts",
    "normalize", "repeats_of_previous", "words",
]
