"""The embedded default's tokenizer, trained locally with `tokenizers`.

Two kinds: `char` (one token per character: letter tasks such as reverse, last letter and
count need to see letters, and digits are single tokens) and `bpe` (byte-level BPE with
digits split one per token, kept so the choice can be re-measured). Saved as a
`PreTrainedTokenizerFast` folder with a chat template, so
`tokenizer.apply_chat_template(messages, add_generation_prompt=True)` works everywhere.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Iterable

USER_TOKEN = "<|user|>"
ASSISTANT_TOKEN = "<|assistant|>"
SYSTEM_TOKEN = "<|system|>"
EOS_TOKEN = "<|end|>"
PAD_TOKEN = "<|pad|>"
UNK_TOKEN = "<|unk|>"
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, UNK_TOKEN, USER_TOKEN, ASSISTANT_TOKEN, SYSTEM_TOKEN)

# The `{% generation %}` markers let TRL's assistant-only loss find the answer tokens.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}" + SYSTEM_TOKEN + "{{ message['content'] }}"
    "{%- elif message['role'] == 'user' -%}" + USER_TOKEN + "{{ message['content'] }}"
    "{%- elif message['role'] == 'assistant' -%}" + ASSISTANT_TOKEN + "{% generation %}{{ message['content'] }}"
    + EOS_TOKEN + "{% endgeneration %}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}" + ASSISTANT_TOKEN + "{%- endif -%}"
)

TOKENIZER_KINDS = ("char", "bpe")


class TokenizerConfigError(ValueError):
    pass


def build_tokenizer(texts: Iterable[str], *, kind: str = "char", vocab_size: int = 512):
    """Train a tokenizer on `texts`; returns a transformers `PreTrainedTokenizerFast`."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(texts)
    if kind == "char":
        # Every character is its own pre-token, so BPE learns no merges: a character vocabulary
        # built from the corpus, with an unknown token for characters never seen.
        tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
        tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        tokenizer.decoder = decoders.Fuse()
        # Printable ASCII always, so prompts outside the corpus still encode without unknowns.
        alphabet = sorted(set("".join(texts)) | set(string.printable))
        trainer = trainers.BpeTrainer(
            vocab_size=len(alphabet) + len(SPECIAL_TOKENS), special_tokens=list(SPECIAL_TOKENS), initial_alphabet=alphabet
        )
    elif kind == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token=None))
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    else:
        raise TokenizerConfigError(f"unknown tokenizer kind {kind!r} (known: {', '.join(TOKENIZER_KINDS)})")
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        additional_special_tokens=[USER_TOKEN, ASSISTANT_TOKEN, SYSTEM_TOKEN],
        clean_up_tokenization_spaces=False,
        padding_side="left",
        model_max_length=256,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tokenizer(tokenizer, path: Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(path))
    return path


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))
