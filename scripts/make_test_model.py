"""Build an offline dual-encoder checkpoint with random weights for tests.

The hub is not reachable here, so tests need local folders that load exactly like
the real checkpoints: the real architecture, a real tokenizer of the family's kind
and the family's real image preprocessing, but randomly initialised weights.
Scores computed with them are meaningless; only shapes and plumbing are real.

- CLIP (`tiny`, `vit-b-32`): openai/clip-vit-base-patch32's BPE tokenizer itself, from
  the vocabulary file in scripts/assets, and its processor (shortest side to 224, bicubic,
  centre crop).
- SigLIP (`siglip-tiny`, `siglip`): google/siglip-base-patch16-224's layout. Its tokenizer is a
  SentencePiece unigram model (`SiglipTokenizer`: lowercase, punctuation removed, `</s>`
  appended and used as padding, no attention mask), trained here on a small English word
  list because the real vocabulary file does not ship in any package; its processor
  resizes straight to 224x224 (bicubic, no crop) with mean = std = 0.5.
- SigLIP 2, fixed resolution (`siglip2-tiny`, `siglip2`): google/siglip2-base-patch16-224's
  layout, which is model_type "siglip" too. Its tokenizer is Gemma's (byte-fallback BPE,
  `<pad>` 0, `<eos>` 1, `<bos>` 2, `<unk>` 3; no BOS, EOS appended, right padding, no
  attention mask, as transformers' conversion script sets it), here a BPE trained with
  SentencePiece on the same word list; its processor resizes to 224x224 bilinear.

`tiny` sizes keep the tests fast; the others have the released models' shapes.

Usage: python scripts/make_test_model.py OUT_DIR --arch ARCH [--seed 0]
"""

import argparse
import gzip
import io
import json
import math
import random
import tempfile
from pathlib import Path

import sentencepiece
import torch
from tokenizers.models import BPE
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizer,
    GemmaTokenizer,
    SiglipConfig,
    SiglipModel,
    SiglipProcessor,
    SiglipTokenizer,
)
from transformers.convert_slow_tokenizer import SentencePieceExtractor
from transformers.image_utils import PILImageResampling
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

BPE_PATH = Path(__file__).resolve().parent / "assets" / "bpe_simple_vocab_16e6.txt.gz"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
BOS_ID, EOS_ID = 49406, 49407
VOCAB_SIZE = 49408
CONTEXT_LENGTH = 77
# Known-good ids from OpenAI's clip.tokenize, to catch a wrong vocab order.
REFERENCE_CAPTION = "a photo of a cat"
REFERENCE_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
SIGLIP_BASE = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
CLIP_ARCHS = {
    "tiny": dict(
        text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
        vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
        projection_dim=16,
    ),
    "vit-b-32": dict(
        text=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8),
        vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
        projection_dim=512,
    ),
}
# SigLIP's towers share one width; `vocab_size` None means the trained tokenizer's own size.
SIGLIP_ARCHS = {
    "siglip-tiny": dict(tokenizer="siglip", tower=TINY, vocab_size=None),
    "siglip": dict(tokenizer="siglip", tower=SIGLIP_BASE, vocab_size=32_000),
    "siglip2-tiny": dict(tokenizer="gemma", tower=TINY, vocab_size=None),
    "siglip2": dict(tokenizer="gemma", tower=SIGLIP_BASE, vocab_size=256_000),
}
ARCHS = sorted([*CLIP_ARCHS, *SIGLIP_ARCHS])
SIGLIP_CONTEXT_LENGTH = 64  # text_config.max_position_embeddings of every released SigLIP
SIGLIP_IMAGE_SIZE, SIGLIP_PATCH_SIZE = 224, 16
# Pieces in the trained vocabularies; enough for whole common words, small enough to build in seconds.
TRAINED_VOCAB_SIZE = 2000
# The pair head's parameters. Random init leaves both at 0 (transformers' _init_weights);
# t' = log 10 is the SigLIP paper's initial temperature, and the bias is set so that the
# sigmoid of random-weight cosines lands mid-range, where a wrong probability formula shows.
LOGIT_SCALE = math.log(10.0)
LOGIT_BIAS = -1.0


def bytes_to_unicode():
    """OpenAI CLIP's byte -> printable unicode table; its order fixes the first 256 ids."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_bpe_files(out_dir: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Write vocab.json and merges.txt exactly as OpenAI's SimpleTokenizer derives them."""
    with gzip.open(BPE_PATH, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    tokens = list(bytes_to_unicode().values())
    tokens += [t + "</w>" for t in tokens]
    tokens += ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise RuntimeError(f"built {len(vocab)} vocab entries from {BPE_PATH}, expected {VOCAB_SIZE}")
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    return vocab, merges


def build_tokenizer(out_dir: Path) -> CLIPTokenizer:
    """Real CLIP tokenizer; refuses to continue if it disagrees with OpenAI's ids."""
    vocab, merges = write_bpe_files(out_dir)
    tokenizer = CLIPTokenizer(
        vocab=vocab, merges=merges, bos_token=BOS, eos_token=EOS, pad_token=EOS, unk_token=EOS,
        model_max_length=CONTEXT_LENGTH,
    )
    ids = tokenizer(REFERENCE_CAPTION)["input_ids"]
    if ids != REFERENCE_IDS:
        raise RuntimeError(
            f"tokenizer gives {ids} for {REFERENCE_CAPTION!r}, OpenAI CLIP gives {REFERENCE_IDS}"
        )
    return tokenizer


def build_config(arch: str) -> CLIPConfig:
    """CLIPConfig for `arch`; vit-b-32 matches openai/clip-vit-base-patch32.

    eos_token_id is 49407, not the legacy 2 of the released config (which makes CLIPTextTransformer
    pool at argmax(input_ids)): with 49407 it pools at the first EOS, correct when pad is EOS too.
    """
    spec = CLIP_ARCHS[arch]
    shared = dict(hidden_act="quick_gelu", projection_dim=spec["projection_dim"])
    text = dict(
        spec["text"], **shared, vocab_size=VOCAB_SIZE, max_position_embeddings=CONTEXT_LENGTH,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID,
    )
    vision = dict(spec["vision"], **shared, image_size=224, patch_size=32)
    return CLIPConfig(
        text_config=text, vision_config=vision, projection_dim=spec["projection_dim"],
        logit_scale_init_value=2.6592,
    )


def training_sentences() -> list[str]:
    """A fixed English corpus: the whole words of CLIP's BPE merges, most frequent first,
    repeated in a Zipf-like way so that common words become single pieces. Built from the
    shipped vocabulary file, so every build trains the same tokenizer."""
    with gzip.open(BPE_PATH, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")[1:20_000]
    words = []
    for line in lines:
        left, _, right = line.partition(" ")
        word = left + right.removesuffix("</w>")
        if right.endswith("</w>") and word.isascii() and word.isalpha() and len(word) > 1:
            words.append(word)
    words = ["a", *words]  # a one-letter word never comes out of a merge
    stream = [word for rank, word in enumerate(words) for _ in range(max(1, 400 // (rank + 4)))]
    random.Random(0).shuffle(stream)  # fixed seed: the same sentences every build
    sentences = [stream[i : i + 10] for i in range(0, len(stream), 10)]
    return [" ".join([s[0].capitalize(), *s[1:]]) + "." for s in sentences]


def train_sentencepiece(**options) -> bytes:
    """A SentencePiece model trained on `training_sentences`, deterministically (one thread)."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(training_sentences()), model_writer=model, vocab_size=TRAINED_VOCAB_SIZE,
        num_threads=1, shuffle_input_sentence=False, minloglevel=2, **options,
    )
    return model.getvalue()


def build_siglip_tokenizer(out_dir: Path) -> SiglipTokenizer:
    """SigLIP's tokenizer: a unigram model with T5's ids (<pad> 0, </s> 1, <unk> 2) and, as
    transformers' conversion script makes it, no attention mask in its output."""
    vocab_file = out_dir / "spiece.model"
    vocab_file.write_bytes(train_sentencepiece(
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
    ))
    tokenizer = SiglipTokenizer(vocab_file=str(vocab_file), model_input_names=["input_ids"])
    _check_special_ids(tokenizer, eos_token_id=1, pad_token_id=1, unk_token_id=2)
    return tokenizer


def build_gemma_tokenizer() -> GemmaTokenizer:
    """SigLIP 2's tokenizer: Gemma's kind (byte-fallback BPE, Gemma's special ids), set up as
    transformers' SigLIP conversion script sets google/gemma's for SigLIP 2."""
    with tempfile.TemporaryDirectory() as scratch:
        model_file = Path(scratch) / "tokenizer.model"
        model_file.write_bytes(train_sentencepiece(
            model_type="bpe", byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True,
            add_dummy_prefix=False, remove_extra_whitespaces=False, normalization_rule_name="identity",
            pad_id=0, eos_id=1, bos_id=2, unk_id=3, user_defined_symbols=["<mask>"],
            pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        ))
        pieces = SentencePieceExtractor(str(model_file)).extract(BPE)
    tokenizer = GemmaTokenizer(
        vocab=pieces["vocab"], merges=pieces["merges"], add_bos_token=False, add_eos_token=True,
        padding_side="right", do_lower_case=True, model_input_names=["input_ids"],
    )
    _check_special_ids(tokenizer, pad_token_id=0, eos_token_id=1, bos_token_id=2, unk_token_id=3)
    return tokenizer


def _check_special_ids(tokenizer, **expected: int) -> None:
    """The released tokenizers' special-token ids; a build that differs would mislead the tests."""
    found = {name: getattr(tokenizer, name) for name in expected}
    if found != expected:
        raise RuntimeError(f"tokenizer special ids are {found}, the released tokenizer's are {expected}")


def build_siglip_config(arch: str, tokenizer) -> SiglipConfig:
    """SiglipConfig for `arch`; `siglip` and `siglip2` match the released base-patch16-224 models.

    The token ids are the tokenizer's (the released configs keep CLIP's 49406 and 49407, which
    the model never reads: it pools the last position, whatever token is there).
    """
    spec = SIGLIP_ARCHS[arch]
    return SiglipConfig(
        text_config=dict(spec["tower"], vocab_size=spec["vocab_size"] or len(tokenizer),
                         max_position_embeddings=SIGLIP_CONTEXT_LENGTH, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(spec["tower"], image_size=SIGLIP_IMAGE_SIZE, patch_size=SIGLIP_PATCH_SIZE),
    )


def save_clip(out_dir: Path, arch: str) -> CLIPModel:
    tokenizer = build_tokenizer(out_dir)
    # Explicit PIL backend: CLIPImageProcessor needs torchvision and warns when it falls back.
    image_processor = CLIPImageProcessorPil()
    # The processor writes tokenizer.json and processor_config.json; preprocessor_config.json is
    # saved on its own too, as in the hub repo, for readers that only know that file.
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out_dir)
    image_processor.save_pretrained(out_dir)
    return CLIPModel(build_config(arch))


def save_siglip(out_dir: Path, arch: str) -> SiglipModel:
    if SIGLIP_ARCHS[arch]["tokenizer"] == "siglip":
        tokenizer, resample = build_siglip_tokenizer(out_dir), PILImageResampling.BICUBIC
    else:
        tokenizer, resample = build_gemma_tokenizer(), PILImageResampling.BILINEAR
    # The released preprocessor_config.json: size 224x224, no crop, rescale 1/255, mean = std = 0.5;
    # resample 3 (bicubic) for SigLIP, 2 (bilinear) for SigLIP 2.
    image_processor = SiglipImageProcessorPil(resample=resample)
    SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out_dir)
    image_processor.save_pretrained(out_dir)
    model = SiglipModel(build_siglip_config(arch, tokenizer))
    with torch.no_grad():
        model.logit_scale.fill_(LOGIT_SCALE)
        model.logit_bias.fill_(LOGIT_BIAS)
    return model


# (name, the released checkpoint it imitates, what of its tokenizer it has)
TRAINED_TOKENIZER = "kind of tokenizer (a small trained vocabulary)"
FAMILY_NAMES = {"clip": ("CLIP", "openai/clip-vit-base-patch32", "tokenizer"),
                "siglip": ("SigLIP", "google/siglip-base-patch16-224", TRAINED_TOKENIZER),
                "siglip2": ("SigLIP 2", "google/siglip2-base-patch16-224", TRAINED_TOKENIZER)}


def family_of(arch: str) -> str:
    if arch in CLIP_ARCHS:
        return "clip"
    return "siglip" if SIGLIP_ARCHS[arch]["tokenizer"] == "siglip" else "siglip2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--arch", choices=ARCHS, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)

    family = family_of(args.arch)
    torch.manual_seed(args.seed)
    save = save_clip if family == "clip" else save_siglip
    model = save(args.out_dir, args.arch).to(torch.float32)
    model.save_pretrained(args.out_dir)

    name, released, tokenizer = FAMILY_NAMES[family]
    (args.out_dir / "README.md").write_text(
        f"# Random-weight {name} test checkpoint\n\n"
        f"Built by `scripts/make_test_model.py --arch {args.arch} --seed {args.seed}`.\n\n"
        f"The weights are RANDOM: similarity scores from this model mean nothing.\n"
        f"Only the architecture, the {tokenizer} and the image preprocessing match "
        f"{released}, so it is good for offline tests of the plumbing.\n",
        encoding="utf-8",
    )
    n_params = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.arch} {name} (seed {args.seed}, {n_params:,} random params) to {args.out_dir}")


if __name__ == "__main__":
    main()
