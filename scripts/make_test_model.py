"""Build an offline CLIP checkpoint with random weights for tests.

The hub is not reachable here, so tests need a local folder that loads exactly
like openai/clip-vit-base-patch32: the real architecture, the real BPE
tokenizer and the real image preprocessing, but randomly initialised weights.
Scores computed with it are meaningless; only shapes and plumbing are real.

Usage: python scripts/make_test_model.py OUT_DIR --arch tiny|vit-b-32 [--seed 0]
"""

import argparse
import gzip
import json
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

BPE_PATH = Path(__file__).resolve().parent / "assets" / "bpe_simple_vocab_16e6.txt.gz"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
BOS_ID, EOS_ID = 49406, 49407
VOCAB_SIZE = 49408
CONTEXT_LENGTH = 77
# Known-good ids from OpenAI's clip.tokenize, to catch a wrong vocab order.
REFERENCE_CAPTION = "a photo of a cat"
REFERENCE_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]

ARCHS = {
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
    spec = ARCHS[arch]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--arch", choices=sorted(ARCHS), required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tokenizer(args.out_dir)
    # Explicit PIL backend: CLIPImageProcessor needs torchvision and warns when it falls back.
    image_processor = CLIPImageProcessorPil()
    # The processor writes tokenizer.json and processor_config.json; preprocessor_config.json is
    # saved on its own too, as in the hub repo, for readers that only know that file.
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(args.out_dir)
    image_processor.save_pretrained(args.out_dir)

    torch.manual_seed(args.seed)
    model = CLIPModel(build_config(args.arch)).to(torch.float32)
    model.save_pretrained(args.out_dir)

    (args.out_dir / "README.md").write_text(
        f"# Random-weight CLIP test checkpoint\n\n"
        f"Built by `scripts/make_test_model.py --arch {args.arch} --seed {args.seed}`.\n\n"
        f"The weights are RANDOM: similarity scores from this model mean nothing.\n"
        f"Only the architecture, tokenizer and image preprocessing match "
        f"openai/clip-vit-base-patch32, so it is good for offline tests of the plumbing.\n",
        encoding="utf-8",
    )
    n_params = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.arch} CLIP (seed {args.seed}, {n_params:,} random params) to {args.out_dir}")


if __name__ == "__main__":
    main()
