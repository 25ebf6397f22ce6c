"""The classes that own a dual-encoder model, one per family behind one interface
(`DualEncoderScorer`, built by `make_scorer`), which the batch pool and Serve both use,
and the scoring math: cosine of unit embeddings, its mapping to [0, 1], and for SigLIP
the pair head's probability.

Inputs are already-cropped uint8 pixels (see `preprocess`) and caption strings;
outputs are float32 cosines. Identical images and identical captions in a call are
encoded once. Embeddings are L2-normalised and the cosine is taken in float32,
whatever dtype the network runs in.

What surrounds the model calls runs on the one thread that feeds the device, so it is kept
to one pass over each input: images are told apart by keys the fetch stage computed
(`columns.pixels_key`), captions are tokenised once, and a family that pads to the longest
caption (CLIP) encodes its captions in groups of similar length, so a batch's one long
caption does not pad all the others to it.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import numpy as np
import torch

from .columns import pixels_key
from .config import ModelConfig
from .loading import Family, load_model, load_preprocess_spec, model_family, resolve_device, resolve_dtype
from .preprocess import PreprocessSpec

SIMILARITY_DECIMALS = 4
# Captions per text-model call where a family pads to the longest caption of the call (CLIP):
# a 1,024-pair batch of web captions (median ~15 tokens, a few at the 77-token context) padded
# as one call averaged 60 positions a caption; sorted by length and cut into calls of this many,
# about 20 (docs/benchmarks.md, "Scorer overhead"). Fewer rows than this are one call, as before.
TEXT_GROUP_ROWS = 128


def cosine_rows(image_embeddings: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
    """Row-wise dot product of unit vectors, in float32."""
    a = np.asarray(image_embeddings, dtype=np.float32)
    b = np.asarray(text_embeddings, dtype=np.float32)
    return np.einsum("ij,ij->i", a, b).astype(np.float32)


def similarity_from_cosine(cosine: np.ndarray) -> np.ndarray:
    """``round((cos + 1) / 2, 4)``, all in float64 so 4 decimals print as 4.

    (cos + 1) / 2 is exact in float64 for a float32 cosine; in float32 it is not, and about
    1 score in 10,000 came out 0.0001 away from the one its own cosine column gives.
    """
    half = (np.asarray(cosine, dtype=np.float64) + 1.0) / 2.0
    return np.round(half, SIMILARITY_DECIMALS)


@dataclass(frozen=True)
class ScoreBatch:
    """One call's results, one row per pair.

    The embeddings are the ones the cosine was taken from, so embedding columns and a
    second use of them (dedup, kNN) cost no second model pass.
    """

    cosine: np.ndarray  # float32, one per pair
    truncated: np.ndarray  # bool: the caption was cut to the model's context
    image_embeddings: np.ndarray  # (pairs, dim) float32, unit length: each pair's image
    text_embeddings: np.ndarray  # (pairs, dim) float32, unit length: each pair's caption
    # float64 match probability from the family's trained pair head; None for a family
    # without one (CLIP's logits only mean something under a softmax over candidates).
    probability: np.ndarray | None = None


class DualEncoderScorer:
    """A loaded image-text dual encoder: what the batch stage, Serve and the warm scorer
    call, whatever the family. Subclasses say how their family's processor prepares text
    (`text_padding`) and what their pair head makes of a cosine (`probabilities`)."""

    family: Family
    text_padding: str  # the tokenizer's `padding` mode, as the family's documented use passes it

    def __init__(self, cfg: ModelConfig):
        self.model_id = cfg.model
        self.device = resolve_device(cfg.device)
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        if self.device == "cpu":
            torch.set_num_threads(cfg.cpu_threads or os.cpu_count() or 1)
        self.preprocess = load_preprocess_spec(cfg.model)
        self.model, self.tokenizer = load_model(cfg.model, self.device, self.dtype, self.family)
        self.max_text_tokens = int(self.model.config.text_config.max_position_embeddings)
        # A fast tokenizer's truncation and padding are settings of its one backend object, set before
        # each encode (transformers 5.24 `set_truncation_and_padding`): a GPU scorer actor runs two
        # batches at once (`pipeline.add_scores`), and one's encode must not run under the other's
        # settings (tests/test_score_stage.py shows it would), so calls take turns on it.
        self.tokenizer_lock = threading.Lock()

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def score(self, pixels: np.ndarray, captions: list[str], image_keys: np.ndarray | None = None) -> ScoreBatch:
        """Cosine similarity of each (pixels[i], captions[i]) pair, and what goes with it.

        `image_keys[i]`, where given, is `columns.pixels_key` of row i's pixels, as the fetch stage
        computed it beside many other fetch actors; without keys (Serve, a caller's own pixels)
        each row's pixels are hashed here, as many as a request batch holds."""
        if len(pixels) != len(captions):
            raise ValueError(f"{len(pixels)} images but {len(captions)} captions")
        if not captions:
            cosine, no_embeddings = np.zeros(0, np.float32), np.zeros((0, 0), np.float32)
            return ScoreBatch(cosine, np.zeros(0, bool), no_embeddings, no_embeddings, self.probabilities(cosine))
        keys = [pixels_key((p,)) for p in pixels] if image_keys is None else np.asarray(image_keys).tolist()
        first_image, image_index = _group(keys)
        first_caption, caption_index = _group(captions)
        # Every row distinct (the usual case): the rows in their order, not a copy of them.
        distinct = pixels if len(first_image) == len(pixels) else pixels[first_image]
        image_embeddings = self.embed_images(distinct)[image_index]
        text_embeddings, truncated = self.embed_texts([captions[i] for i in first_caption])
        text_embeddings = text_embeddings[caption_index]
        cosine = cosine_rows(image_embeddings, text_embeddings)
        return ScoreBatch(cosine, truncated[caption_index], image_embeddings, text_embeddings,
                          self.probabilities(cosine))

    def probabilities(self, cosine: np.ndarray) -> np.ndarray | None:
        """The pair head's match probability for each cosine; None where the family has none."""
        return None

    def pixel_buffer(self, shape: tuple[int, ...]) -> np.ndarray:
        """An empty uint8 array of `shape` for pixels on their way to `embed_images`: page-locked
        on CUDA, so their copy to the device is one asynchronous DMA, not a staging copy first."""
        if self.device == "cuda":
            return torch.empty(shape, dtype=torch.uint8, pin_memory=True).numpy()
        return np.empty(shape, dtype=np.uint8)

    @torch.inference_mode()
    def embed_images(self, pixels: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 to (N, D) unit-length float32 embeddings."""
        batch = torch.from_numpy(np.ascontiguousarray(pixels))
        if self.device == "cuda":
            if not batch.is_pinned():  # pixels not from `pixel_buffer` (Serve's, a duplicate-free subset)
                batch = batch.pin_memory()
            # The host array outlives the copy: `_unit` below waits for the device before returning.
            batch = batch.to(self.device, non_blocking=True)
        values = normalize(batch, self.preprocess).to(self.dtype)
        features = self.model.get_image_features(pixel_values=values).pooler_output
        return _unit(features)

    @torch.inference_mode()
    def embed_texts(self, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Unit-length float32 embeddings, and which captions were truncated."""
        ids, truncated = self.token_ids(captions)
        groups = self.text_groups(ids)
        parts = []
        for rows in groups:
            with self.tokenizer_lock:
                tokens = self.tokenizer.pad({"input_ids": [ids[row] for row in rows]}, padding=self.text_padding,
                                            max_length=self.max_text_tokens, return_tensors="pt")
            # Exactly what the tokenizer makes goes in, as the processor's output does in the
            # documented ``model(**processor(...))``: an attention mask only where it makes one.
            inputs = {name: tokens[name].to(self.device) for name in ("input_ids", "attention_mask") if name in tokens}
            parts.append(self.model.get_text_features(**inputs).pooler_output)
        if len(groups) == 1:
            features = parts[0]
        else:  # grouped by length: back to the callers' order
            back = torch.from_numpy(np.argsort(np.concatenate(groups))).to(self.device)
            features = torch.cat(parts)[back]
        return _unit(features), truncated

    def token_ids(self, captions: list[str]) -> tuple[list[list[int]], np.ndarray]:
        """Each caption's token ids cut to the context, as one padded call of the tokenizer gives
        them (padding aside), and which captions were cut.

        One call at one token past the context tells a cut caption (its ids run past the context)
        and gives every other caption's ids whole; only the cut ones are tokenised again, at the
        context, where the tokenizer keeps its closing token. Truncating there also keeps long
        captions cheap and the tokenizer's over-length warning quiet.
        """
        context = self.max_text_tokens
        with self.tokenizer_lock:
            ids = self.tokenizer(captions, truncation=True, max_length=context + 1,
                                 return_attention_mask=False)["input_ids"]
            truncated = np.array([len(row) > context for row in ids], dtype=bool)
            cut = np.flatnonzero(truncated).tolist()
            if cut:
                again = self.tokenizer([captions[i] for i in cut], truncation=True, max_length=context,
                                       return_attention_mask=False)["input_ids"]
                for row, row_ids in zip(cut, again, strict=True):
                    ids[row] = row_ids
        return ids, truncated

    def text_groups(self, ids: list[list[int]]) -> list[list[int]]:
        """The captions of each text-model call: sorted by length and cut into calls of
        `TEXT_GROUP_ROWS` where the family pads a call to its longest caption and there is more
        than one call's worth; else one call in the given order (SigLIP pads every caption to the
        context, so grouping would change nothing)."""
        rows = list(range(len(ids)))
        if self.text_padding != "longest" or len(rows) <= TEXT_GROUP_ROWS:
            return [rows]
        rows.sort(key=lambda row: len(ids[row]))
        return [rows[start:start + TEXT_GROUP_ROWS] for start in range(0, len(rows), TEXT_GROUP_ROWS)]


class ClipScorer(DualEncoderScorer):
    """CLIP (and OpenCLIP or MetaCLIP checkpoints in transformers' layout).

    Captions are padded to the longest in the call: the text tower pools at the EOS
    token under a causal mask, so padding does not change a caption's embedding.
    """

    family = "clip"
    text_padding = "longest"


class SiglipScorer(DualEncoderScorer):
    """SigLIP and fixed-resolution SigLIP 2 (model_type "siglip").

    Captions are padded to the full context, as the model was trained and as its
    documented use does (``padding="max_length"``, ``max_length=64``): the text tower
    pools the last position, padding or not, so a shorter pad would change the score.
    The released tokenizers return no attention mask (big_vision trained without one).
    """

    family = "siglip"
    text_padding = "max_length"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        # SiglipModel.forward: logits = cos * logit_scale.exp() + logit_bias; probability = sigmoid.
        # The paper's temperature t = exp(t') and bias b, as loaded (in the model's dtype).
        self.temperature = float(self.model.logit_scale.detach().float().exp().item())
        self.bias = float(self.model.logit_bias.detach().float().item())

    def probabilities(self, cosine: np.ndarray) -> np.ndarray:
        logits = np.asarray(cosine, dtype=np.float64) * self.temperature + self.bias
        return 1.0 / (1.0 + np.exp(-logits))


SCORERS: dict[Family, type[DualEncoderScorer]] = {"clip": ClipScorer, "siglip": SiglipScorer}


def make_scorer(cfg: ModelConfig) -> DualEncoderScorer:
    """The scorer for the checkpoint's family (from its config; see `loading.model_family`)."""
    return SCORERS[model_family(cfg.model)](cfg)


def normalize(pixels: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """(N, H, W, 3) uint8 to (N, 3, H, W) float32, rescaled and normalised.

    The same float32 operations, element by element, as ``(x * rescale - mean) / std``, done in
    place on the one float copy: a new array per step cost three more allocations of the batch's
    size (616 MB at 1,024 pairs of 224 px), and on a CPU their page faults were most of the time
    (1.0 s against 3.0 s for 512 images here; the result bit for bit the same, strides too).
    """
    mean = torch.tensor(spec.image_mean, dtype=torch.float32, device=pixels.device)
    std = torch.tensor(spec.image_std, dtype=torch.float32, device=pixels.device)
    x = pixels.to(torch.float32, copy=True)  # never the caller's tensor, whatever its dtype
    x.mul_(spec.rescale_factor).sub_(mean).div_(std)  # channels last: mean and std broadcast along it
    return x.permute(0, 3, 1, 2)


def _unit(features: torch.Tensor) -> np.ndarray:
    features = features.to(torch.float32)
    return torch.nn.functional.normalize(features, dim=-1).cpu().numpy()


def _group(keys: list) -> tuple[list[int], list[int]]:
    """Where each distinct key first appears, and for every key the number of its group."""
    groups: dict = {}
    first: list[int] = []
    index = []
    for position, key in enumerate(keys):
        if key not in groups:
            groups[key] = len(first)
            first.append(position)
        index.append(groups[key])
    return first, index
