"""Tiny random-init Hugging Face checkpoints and generated data for fast tests.

Everything is created locally (no network): a WordPiece vocabulary for BERT, byte-level BPE
(trained with the ``tokenizers`` library) for GPT-2 and RoBERTa.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

CLASS_WORDS = {
    "billing": ["invoice", "refund", "charged", "payment", "card", "price", "vat", "coupon"],
    "shipping": ["parcel", "delivery", "courier", "tracking", "address", "shipped", "late", "box"],
    "technical": ["crash", "error", "bug", "login", "page", "button", "app", "loading"],
}
FILLER = [
    "my",
    "the",
    "is",
    "please",
    "help",
    "again",
    "today",
    "order",
    "why",
    "still",
    "not",
    "a",
]


def make_texts(
    n: int, seed: int = 0, weights: tuple[float, ...] = (0.45, 0.35, 0.20)
) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    labels = list(CLASS_WORDS)
    rows = []
    for _ in range(n):
        label = rng.choices(labels, weights=weights)[0]
        words = rng.sample(CLASS_WORDS[label], 3) + rng.sample(FILLER, rng.randint(2, 5))
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def write_csv(
    path: Path, rows: list[tuple[str, str]], header: tuple[str, str] = ("text", "label")
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def corpus() -> list[str]:
    return [" ".join(ws) for ws in CLASS_WORDS.values()] + [" ".join(FILLER)]


def tiny_checkpoint(folder: Path, family: str = "bert") -> Path:
    """Save a tiny random-init model + fast tokenizer of ``family`` into ``folder``."""
    import torch
    import transformers
    from tokenizers import ByteLevelBPETokenizer

    torch.manual_seed(0)  # the same tiny model in every test session
    folder.mkdir(parents=True, exist_ok=True)
    small = dict(num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    if family == "bert":
        vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(
            {w for ws in CLASS_WORDS.values() for w in ws} | set(FILLER)
        )
        from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

        ids = {w: i for i, w in enumerate(vocab)}
        wp = Tokenizer(models.WordPiece(ids, unk_token="[UNK]"))
        wp.normalizer = normalizers.BertNormalizer(lowercase=True)
        wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        wp.post_processor = processors.BertProcessing(
            ("[SEP]", ids["[SEP]"]), ("[CLS]", ids["[CLS]"])
        )
        tok = transformers.PreTrainedTokenizerFast(
            tokenizer_object=wp,
            unk_token="[UNK]",
            pad_token="[PAD]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
        )
        config = transformers.BertConfig(
            vocab_size=len(vocab), hidden_size=32, max_position_embeddings=64, **small
        )
        model = transformers.BertModel(config)
    else:
        bpe = ByteLevelBPETokenizer()
        specials = (
            ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
            if family == "roberta"
            else ["<|endoftext|>"]
        )
        bpe.train_from_iterator(
            corpus() * 5, vocab_size=300, min_frequency=1, special_tokens=specials
        )
        if family == "gpt2":
            tok = transformers.PreTrainedTokenizerFast(
                tokenizer_object=bpe._tokenizer,
                eos_token="<|endoftext|>",
                bos_token="<|endoftext|>",
                unk_token="<|endoftext|>",
            )
            config = transformers.GPT2Config(
                vocab_size=len(tok),
                n_embd=32,
                n_layer=2,
                n_head=2,
                n_positions=64,
                bos_token_id=tok.eos_token_id,
                eos_token_id=tok.eos_token_id,
            )
            model = transformers.GPT2Model(config)
        else:
            tok = transformers.PreTrainedTokenizerFast(
                tokenizer_object=bpe._tokenizer,
                bos_token="<s>",
                eos_token="</s>",
                pad_token="<pad>",
                unk_token="<unk>",
                mask_token="<mask>",
            )
            config = transformers.RobertaConfig(
                vocab_size=len(tok),
                hidden_size=32,
                max_position_embeddings=70,
                pad_token_id=tok.pad_token_id,
                **small,
            )
            model = transformers.RobertaModel(config)
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder
