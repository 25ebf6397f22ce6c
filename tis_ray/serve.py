"""Ray Serve wiring: the shared scorer (`scorer.make_scorer`: CLIP or SigLIP) behind a FastAPI ingress.

Pairs from many requests are batched together by ``@serve.batch`` (size and wait
set by ``user_config`` and changed live by ``reconfigure``). Images are fetched
only over http(s) and only from public addresses unless an allowlist says
otherwise (see `netguard`). Whether a request gets in at all (key, type, size,
shape) is decided by `request_checks`, before the replica does any work for it.
Deployed by ``tis-ray serve`` (`cli`) or by ``serve deploy`` with the config files
in ``deploy/``, both from a `ServeArgs`.
"""


import asyncio
import logging
import os
import time
from typing import Annotated

import numpy as np
from fastapi import FastAPI, Request
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    model_validator,
)
from ray import serve
from ray.serve import metrics

from . import __version__, errors
from .config import (
    DEFAULT_MODEL,
    SERVE_BATCH_WAIT_MS,
    SERVE_MAX_BATCH_SIZE,
    SERVE_MAX_ONGOING_REQUESTS,
    SERVE_MAX_PIXELS,
    SERVE_MAX_QUEUED_REQUESTS,
    Device,
    DType,
    FetchConfig,
    ModelConfig,
)
from .errors import RequestRejected, RowError
from .fetch import ImageFetcher
from .http_api import (
    MAX_CAPTION_CHARS,
    SCORE_ROUTE_DOCS,
    ModelInfo,
    Pair,
    PairResult,
    ScoreResponse,
    public_error_text,
    publish_request_schema,
)
from .netguard import DEFAULT_PORTS, AddressPolicy, guarded_fetcher_parts
from .prepare import ImagePreparer
from .records import check_caption
from .request_checks import ServiceLimits, accepted_pairs, rejection_response
from .scorer import make_scorer, similarity_from_cosine
from .sources import classify_image_ref

logger = logging.getLogger("ray.serve")

app = FastAPI(
    title="tis-ray",
    version=__version__,
    description="How well does a caption describe an image? CLIP similarity in [0, 1], per pair.",
)
publish_request_schema(app, ServiceLimits().max_pairs)


@serve.deployment(max_ongoing_requests=SERVE_MAX_ONGOING_REQUESTS, max_queued_requests=SERVE_MAX_QUEUED_REQUESTS)
@serve.ingress(app)
class ScoringService:
    def __init__(
        self,
        model: str,
        device: str = "auto",
        dtype: str = "auto",
        policy: AddressPolicy | None = None,
        api_key: str | None = None,
        fetch: FetchConfig | None = None,
        limits: ServiceLimits | None = None,
    ):
        self.scorer = make_scorer(ModelConfig(model=model, device=device, dtype=dtype))
        self.fetch = fetch or FetchConfig()
        self.limits = limits or ServiceLimits()
        # `app` here is the replica's own copy (Serve pickles the ingress class by value).
        publish_request_schema(app, self.limits.max_pairs)
        policy = policy or AddressPolicy()
        self.preparer = ImagePreparer(
            self.fetch,
            (self.scorer.preprocess,),
            make_fetcher=lambda: ImageFetcher(self.fetch, *guarded_fetcher_parts(policy, self.fetch)),
        )
        self.api_key = api_key
        self.batch_settings = {"max_batch_size": SERVE_MAX_BATCH_SIZE, "batch_wait_ms": SERVE_BATCH_WAIT_MS}
        self.pairs_scored = metrics.Counter("tis_pairs_scored", description="Pairs scored successfully.")
        self.pair_errors = metrics.Counter(
            "tis_pair_errors", description="Pairs that could not be scored, by error kind.", tag_keys=("kind",)
        )
        self.batch_sizes = metrics.Histogram(
            "tis_batch_size", description="Pairs per model call.", boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256]
        )

    def reconfigure(self, user_config: dict) -> None:
        """Batch size and wait, from the deployment's ``user_config``; applied live."""
        unknown = set(user_config) - set(self.batch_settings)
        if unknown:
            raise ValueError(f"unknown user_config keys: {', '.join(sorted(unknown))}")
        self.batch_settings.update(user_config)
        self._score_batch.set_max_batch_size(int(self.batch_settings["max_batch_size"]))
        self._score_batch.set_batch_wait_timeout_s(float(self.batch_settings["batch_wait_ms"]) / 1000)

    @app.get("/healthz")
    def healthz(self) -> dict:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz(self) -> dict:
        """The model is loaded (a replica serves only once its constructor has loaded it)."""
        return {"status": "ready", "model": self.scorer.model_id}

    @app.get("/v1/model", response_model=ModelInfo)
    def model_info(self) -> ModelInfo:
        return ModelInfo(
            model=self.scorer.model_id,
            device=self.scorer.device,
            dtype=self.scorer.dtype_name,
            max_pairs=self.limits.max_pairs,
            max_body_bytes=self.limits.max_body_bytes,
            max_caption_chars=MAX_CAPTION_CHARS,
            max_image_bytes=self.fetch.max_bytes,
            max_pixels=self.fetch.max_pixels,
            max_batch_size=int(self.batch_settings["max_batch_size"]),
            batch_wait_ms=float(self.batch_settings["batch_wait_ms"]),
        )

    @app.post("/v1/score", response_model=ScoreResponse, openapi_extra=SCORE_ROUTE_DOCS)
    async def score(self, request: Request):
        """Score each pair; a pair that cannot be scored gets an error, the others are scored."""
        started = time.monotonic()
        try:
            pairs = await accepted_pairs(request, self.api_key, self.limits)
        except RequestRejected as rejected:
            return rejection_response(rejected)
        results = await asyncio.gather(*(self._score_pair(pair) for pair in pairs))
        failed = sum(1 for r in results if r.error)
        logger.info("scored %d pairs (%d errors) in %.0f ms", len(results), failed, 1000 * (time.monotonic() - started))
        return ScoreResponse(model=self.scorer.model_id, results=results)

    async def _score_pair(self, pair: Pair) -> PairResult:
        try:
            caption = check_caption(pair.caption)
            pixels = await self._pixels(pair)
            cosine = await self._score_batch((pixels, caption))
        except Exception as exc:  # noqa: BLE001 - one pair's failure is that pair's error
            error = exc if isinstance(exc, RowError) else RowError.internal(exc)
            self.pair_errors.inc(tags={"kind": error.kind})
            # The caller gets the kind and a fixed-vocabulary detail; what the fetch saw of the
            # inside (reason phrases, banners, resolved addresses) goes only to the replica's log.
            logger.info("pair failed: %s", error)
            return PairResult(error=public_error_text(error, self.fetch))
        self.pairs_scored.inc()
        return PairResult(similarity=float(similarity_from_cosine(np.float32(cosine))), cosine=float(cosine))

    async def _pixels(self, pair: Pair) -> np.ndarray:
        if pair.image_bytes is not None:
            return (await self.preparer.from_bytes(pair.image_bytes))[0]
        source = classify_image_ref(pair.image_url, base_dir="/")
        if source.kind != "http":
            raise RowError(errors.UNSUPPORTED_SCHEME, "the service fetches only http and https URLs")
        return (await self.preparer.from_source(source))[0]

    @serve.batch(max_batch_size=SERVE_MAX_BATCH_SIZE, batch_wait_timeout_s=SERVE_BATCH_WAIT_MS / 1000)
    async def _score_batch(self, items: list[tuple[np.ndarray, str]]) -> list[float]:
        self.batch_sizes.observe(len(items))
        pixels = np.stack([pixels for pixels, _ in items])
        result = await asyncio.to_thread(self.scorer.score, pixels, [caption for _, caption in items])
        return [float(c) for c in result.cosine]


Port = Annotated[int, Field(ge=1, le=65535)]


class ServeArgs(BaseModel):
    """The ``args`` of a Serve config's tis-ray application (see deploy/serve-*.yaml), typed.

    Serve validates a config's ``args`` against this model before it calls `build_app`, so a
    wrong type or an unknown key fails the deploy with the field's name; ``tis-ray serve``
    builds one from its flags. Unset fields take the service's defaults.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = DEFAULT_MODEL
    device: Device = "auto"
    dtype: DType = "auto"
    allow_hosts: tuple[str, ...] = ()  # names, IPs, CIDR networks, each with an optional :PORT (netguard)
    allowlist_only: bool = False
    allow_ports: tuple[Port, ...] = ()  # besides 80 and 443
    allow_wide_networks: bool = False
    max_pairs: PositiveInt = ServiceLimits.max_pairs
    max_body_bytes: PositiveInt = ServiceLimits.max_body_bytes
    timeout_s: PositiveFloat = FetchConfig.timeout_s
    max_image_bytes: PositiveInt = FetchConfig.max_bytes
    max_pixels: PositiveInt = SERVE_MAX_PIXELS
    ignore_opt_out: bool = False
    user_agent: Annotated[str, Field(min_length=1)] = FetchConfig.user_agent  # sites look for who asks

    @model_validator(mode="before")
    @classmethod
    def _known_keys_only(cls, args: object) -> object:
        # `extra="forbid"` alone says "Extra inputs are not permitted"; a config's author also
        # needs the names that would have been accepted.
        unknown = set(args) - set(cls.model_fields) if isinstance(args, dict) else set()
        if unknown:
            raise ValueError(f"unknown tis-ray app args: {', '.join(sorted(unknown))} "
                             f"(known: {', '.join(cls.model_fields)})")
        return args

    def service_options(self) -> dict:
        """`ScoringService` constructor arguments; ``ValueError`` for a bad allowlist entry.

        The policy is built here, where a bad entry is one clear error before any replica
        starts; the API key comes from ``TIS_API_KEY`` where the app is built.
        """
        return dict(
            model=self.model,
            device=self.device,
            dtype=self.dtype,
            policy=AddressPolicy.from_strings(self.allow_hosts, self.allowlist_only,
                                              ports=(*DEFAULT_PORTS, *self.allow_ports),
                                              allow_wide_networks=self.allow_wide_networks),
            api_key=os.environ.get("TIS_API_KEY") or None,
            fetch=FetchConfig(timeout_s=self.timeout_s, max_bytes=self.max_image_bytes, max_pixels=self.max_pixels,
                              honor_opt_out=not self.ignore_opt_out, user_agent=self.user_agent),
            limits=ServiceLimits(max_pairs=self.max_pairs, max_body_bytes=self.max_body_bytes),
        )


# The app arg names, for checks that a config's ``args`` name only these.
APP_ARGS = tuple(ServeArgs.model_fields)


def build_app(args: ServeArgs) -> serve.Application:
    """The application for ``serve run`` / ``serve deploy`` (``import_path: tis_ray.serve:build_app``).

    Serve turns the config's ``args`` into a `ServeArgs` (the type hint says so). Batch size
    and wait come from the deployment's ``user_config`` in the same file.
    """
    return ScoringService.bind(**args.service_options())
