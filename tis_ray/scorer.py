"""The one class that owns the CLIP model, which the batch pool and Serve both use, and the
scoring math: cosine of unit embeddings, and its mapping to [0, 1].

Inputs are already-cropped uint8 pixels (see `preprocess`) and caption strings;
outputs are float32 cosines. Identical images and identical captions in a call are
encoded once. Embeddings are L2-normalised and the cosine is taken in float32,
whatever dtype the network runs in.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
import torch

from .config import ModelConfig
from .loading import load_model, load_preprocess_spec, resolve_device, resolve_dtype
from .preprocess import PreprocessSpec

SIMILARITY_DECIMALS = 4



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
    cosine: np.ndarray  # float32, one per pair
    truncated: np.ndarray  # bool: the caption was cut to the model's context


class ClipScorer:
    def __init__(self, cfg: ModelConfig):
        self.model_id = cfg.model
        self.device = resolve_device(cfg.device)
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        if self.device == "cpu":
            torch.set_num_threads(cfg.cpu_threads or os.cpu_count() or 1)
        self.preprocess = load_preprocess_spec(cfg.model)
        self.model, self.tokenizer = load_model(cfg.model, self.device, self.dtype)
        self.max_text_tokens = int(self.model.config.text_config.max_position_embeddings)

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def score(self, pixels: np.ndarray, captions: list[str]) -> ScoreBatch:
        """Cosine similarity of each (pixels[i], captions[i]) pair."""
        if len(pixels) != len(captions):
            raise ValueError(f"{len(pixels)} images but {len(captions)} captions")
        if not captions:
            return ScoreBatch(np.zeros(0, np.float32), np.zeros(0, bool))
        first_image, image_index = _group([_digest(p) for p in pixels])
        first_caption, caption_index = _group(captions)
        image_embeddings = self.embed_images(pixels[first_image])
        text_embeddings, truncated = self.embed_texts([captions[i] for i in first_caption])
        cosine = cosine_rows(image_embeddings[image_index], text_embeddings[caption_index])
        return ScoreBatch(cosine, truncated[caption_index])

    @torch.inference_mode()
    def embed_images(self, pixels: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 to (N, D) unit-length float32 embeddings."""
        batch = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device, non_blocking=True)
        values = normalize(batch, self.preprocess).to(self.dtype)
        features = self.model.get_image_features(pixel_values=values).pooler_output
        return _unit(features)

    @torch.inference_mode()
    def embed_texts(self, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Unit-length float32 embeddings, and which captions were truncated."""
        # One token past the context is enough to tell a cut caption, and truncating there
        # keeps long captions cheap and the tokenizer's over-length warning quiet.
        limit = self.max_text_tokens + 1
        lengths = [len(ids) for ids in self.tokenizer(captions, truncation=True, max_length=limit)["input_ids"]]
        tokens = self.tokenizer(
            captions, padding=True, truncation=True, max_length=self.max_text_tokens, return_tensors="pt"
        ).to(self.device)
        features = self.model.get_text_features(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        ).pooler_output
        return _unit(features), np.array(lengths) > self.max_text_tokens


def normalize(pixels: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """(N, H, W, 3) uint8 to (N, 3, H, W) float32, rescaled and normalised."""
    mean = torch.tensor(spec.image_mean, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.image_std, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
    x = pixels.permute(0, 3, 1, 2).to(torch.float32) * spec.rescale_factor
    return (x - mean) / std


def _unit(features: torch.Tensor) -> np.ndarray:
    features = features.to(torch.float32)
    return torch.nn.functional.normalize(features, dim=-1).cpu().numpy()


def _digest(pixels: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(pixels).data, digest_size=16).digest()


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
