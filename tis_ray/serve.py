"""Ray Serve wiring: the shared scorers (`scorer.make_scorer`: CLIP or SigLIP) behind a FastAPI ingress.

One replica holds every model its app lists (``models`` in its config, else ``model``
alone), on one device; a request names the ones it wants, else the first scores. An
image is fetched and decoded once per request and resized for each model. Pairs from
many requests, for any model, are batched together by one ``@serve.batch`` (size and
wait set by ``user_config`` and changed live by ``reconfigure``). Images are fetched
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
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated

import numpy as np
import ray
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
    RANK_ROUTE_DOCS,
    SCORE_ROUTE_DOCS,
    Base64Image,
    ModelInfo,
    ModelName,
    ModelScore,
    ModelsPairResult,
    ModelsResponse,
    ModelsScoreResponse,
    PairResult,
    RankCaptionsRequest,
    RankedItem,
    RankResponse,
    ScoreResponse,
    ServedModelInfo,
    UrlImage,
    public_error_text,
    publish_request_schema,
)
from .netguard import DEFAULT_PORTS, AddressPolicy, guarded_fetcher_parts
from .pool_sizing import decode_threads
from .prepare import ImagePreparer
from .records import check_caption
from .request_checks import (
    ServiceLimits,
    accepted_request,
    parse_rank_request,
    parse_score_request,
    rejection_response,
)
from .scorer import make_scorer, similarity_from_cosine
from .sources import classify_image_ref

logger = logging.getLogger("ray.serve")

app = FastAPI(
    title="tis-ray",
    version=__version__,
    description="How well does a caption describe an image? CLIP or SigLIP similarity in [0, 1], per pair.",
)
publish_request_schema(app, ServiceLimits().max_pairs)

# The name of an app's one model when its config gives `model` rather than `models`.
DEFAULT_MODEL_NAME = "default"


class ServedModel(BaseModel):
    """One model of a Serve app that hosts several (its config's ``models``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ModelName  # what requests call it (``"models": [...]``, ``"model": ...``)
    model: str  # a hub id or a checkpoint folder
    dtype: DType | None = None  # None: the app's `dtype`


def replica_decode_threads() -> int:
    """This replica's decode threads: one per CPU its deployment reserves (``ray_actor_options``'
    ``num_cpus``, Serve's default 1), as a fetch actor's follow its reservation (`pool_sizing`)."""
    return decode_threads(ray.get_runtime_context().get_assigned_resources().get("CPU", 0))


Scores = dict[str, ModelScore]  # one pair's, by model name
Image = UrlImage | Base64Image  # a request's image (a pair is one too, with its caption)


@serve.deployment(max_ongoing_requests=SERVE_MAX_ONGOING_REQUESTS, max_queued_requests=SERVE_MAX_QUEUED_REQUESTS)
@serve.ingress(app)
class ScoringService:
    def __init__(
        self,
        model: str | None = None,
        device: Device = "auto",
        dtype: DType = "auto",
        policy: AddressPolicy | None = None,
        api_key: str | None = None,
        fetch: FetchConfig | None = None,
        limits: ServiceLimits | None = None,
        models: tuple[ServedModel, ...] = (),
    ):
        """`model` alone (named ``default``, in `dtype`), or `models` (the first is the default;
        each in its own dtype, else in `dtype`); every model on `device`."""
        if (model is None) == (not models):
            raise ValueError("give the service one of `model` and `models`")
        served = models or (ServedModel(name=DEFAULT_MODEL_NAME, model=model),)
        self.scorers = {m.name: make_scorer(ModelConfig(model=m.model, device=device, dtype=m.dtype or dtype))
                        for m in served}
        self.default_model = served[0].name
        self.scorer = self.scorers[self.default_model]
        self.fetch = fetch or FetchConfig()
        self.limits = limits or ServiceLimits()
        # `app` here is the replica's own copy (Serve pickles the ingress class by value).
        publish_request_schema(app, self.limits.max_pairs, tuple(self.scorers))
        policy = policy or AddressPolicy()
        # One resize per distinct preprocessing: two models that see the same pixels share them.
        specs = tuple(dict.fromkeys(scorer.preprocess for scorer in self.scorers.values()))
        self.spec_of = {name: specs.index(scorer.preprocess) for name, scorer in self.scorers.items()}
        self.preparer = ImagePreparer(
            self.fetch,
            specs,
            decode_threads=replica_decode_threads(),
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
        # @serve.batch adds these setters at run time; its type hints do not show them.
        self._score_batch.set_max_batch_size(  # type: ignore[attr-defined]
            int(self.batch_settings["max_batch_size"]))
        self._score_batch.set_batch_wait_timeout_s(  # type: ignore[attr-defined]
            float(self.batch_settings["batch_wait_ms"]) / 1000)

    @app.get("/healthz")
    def healthz(self) -> dict:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz(self) -> dict:
        """The models are loaded (a replica serves only once its constructor has loaded them)."""
        return {"status": "ready", "model": self.scorer.model_id}

    @app.get("/v1/model", response_model=ModelInfo)
    def model_info(self) -> ModelInfo:
        """The default model, and the service's limits."""
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

    @app.get("/v1/models", response_model=ModelsResponse)
    def models_info(self) -> ModelsResponse:
        """Every model this app serves, by the name a request gives it."""
        return ModelsResponse(default=self.default_model, models=[
            ServedModelInfo(name=name, model=scorer.model_id, family=scorer.family, device=scorer.device,
                            dtype=scorer.dtype_name, context_length=scorer.max_text_tokens,
                            image_size=scorer.preprocess.output_size)
            for name, scorer in self.scorers.items()])

    @app.post("/v1/score", response_model=ScoreResponse | ModelsScoreResponse, openapi_extra=SCORE_ROUTE_DOCS)
    async def score(self, request: Request):
        """Score each pair; a pair that cannot be scored gets an error, the others are scored."""
        started = time.monotonic()
        try:
            parsed = await accepted_request(request, self.api_key, self.limits, lambda body: parse_score_request(
                body, self.limits.max_pairs, tuple(self.scorers)))
        except RequestRejected as rejected:
            return rejection_response(rejected)
        names = parsed.models or [self.default_model]
        outcomes = await self._score_pairs([(pair, pair.caption) for pair in parsed.pairs], names)
        failed = sum(1 for outcome in outcomes if isinstance(outcome, str))
        logger.info("scored %d pairs with %d models (%d errors) in %.0f ms", len(outcomes), len(names), failed,
                    1000 * (time.monotonic() - started))
        if parsed.models is None:  # today's shape: the default model's scores in each result
            return ScoreResponse(model=self.scorer.model_id, results=[
                PairResult(error=outcome) if isinstance(outcome, str) else PairResult(**outcome[names[0]].model_dump())
                for outcome in outcomes])
        return ModelsScoreResponse(models={name: self.scorers[name].model_id for name in names}, results=[
            ModelsPairResult(error=outcome) if isinstance(outcome, str) else ModelsPairResult(scores=outcome)
            for outcome in outcomes])

    @app.post("/v1/rank", response_model=RankResponse, openapi_extra=RANK_ROUTE_DOCS)
    async def rank(self, request: Request):
        """Rank captions for one image, or images for one caption, most similar first; an item
        that cannot be scored gets an error and comes after the ranked ones."""
        started = time.monotonic()
        try:
            parsed = await accepted_request(request, self.api_key, self.limits, lambda body: parse_rank_request(
                body, self.limits.max_pairs, tuple(self.scorers)))
        except RequestRejected as rejected:
            return rejection_response(rejected)
        name = parsed.model or self.default_model
        if isinstance(parsed, RankCaptionsRequest):
            pairs = [(parsed.image, caption) for caption in parsed.captions]  # one image, fetched once
        else:
            pairs = [(image, parsed.caption) for image in parsed.images]
        outcomes = await self._score_pairs(pairs, [name])
        scores = {index: outcome[name] for index, outcome in enumerate(outcomes) if not isinstance(outcome, str)}
        scored = sorted(scores, key=lambda index: -scores[index].cosine)  # stable: ties keep request order
        results = [RankedItem(index=index, **scores[index].model_dump()) for index in scored]
        results += [RankedItem(index=index, error=outcome) for index, outcome in enumerate(outcomes)
                    if isinstance(outcome, str)]
        logger.info("ranked %d items (%d errors) in %.0f ms", len(outcomes), len(outcomes) - len(scored),
                    1000 * (time.monotonic() - started))
        return RankResponse(name=name, model=self.scorers[name].model_id, results=results)

    async def _score_pairs(self, pairs: Sequence[tuple[Image, str]], names: Sequence[str]) -> list[Scores | str]:
        """Each (image, caption) pair scored by each named model, or the error its caller is told.

        An image object that several pairs share (a rank request's one image) is fetched and
        decoded once, when the first of them with a valid caption needs it."""
        fetches: dict[int, asyncio.Future] = {}

        def pixels_of(image: Image) -> Awaitable[tuple[np.ndarray, ...]]:
            if id(image) not in fetches:
                fetches[id(image)] = asyncio.ensure_future(self._pixels(image))
            return fetches[id(image)]

        return await asyncio.gather(*(self._score_pair(image, caption, names, pixels_of) for image, caption in pairs))

    async def _score_pair(self, image: Image, caption: str, names: Sequence[str],
                          pixels_of: Callable[[Image], Awaitable[tuple[np.ndarray, ...]]]) -> Scores | str:
        try:
            caption = check_caption(caption)
            pixels = await pixels_of(image)
            scores = await asyncio.gather(*(self._score_batch((name, pixels[self.spec_of[name]], caption))
                                            for name in names))
        except Exception as exc:  # noqa: BLE001 - one pair's failure is that pair's error
            error = exc if isinstance(exc, RowError) else RowError.internal(exc)
            self.pair_errors.inc(tags={"kind": error.kind})
            # The caller gets the kind and a fixed-vocabulary detail; what the fetch saw of the
            # inside (reason phrases, banners, resolved addresses) goes only to the replica's log.
            logger.info("pair failed: %s", error)
            return public_error_text(error, self.fetch)
        self.pairs_scored.inc()
        return dict(zip(names, scores, strict=True))

    async def _pixels(self, image: Image) -> tuple[np.ndarray, ...]:
        """The image's pixels for each distinct preprocessing (`spec_of` says which is whose)."""
        if image.image_bytes is not None:
            return await self.preparer.from_bytes(image.image_bytes)
        source = classify_image_ref(image.image_url, base_dir="/")
        if source.kind != "http":
            raise RowError(errors.UNSUPPORTED_SCHEME, "the service fetches only http and https URLs")
        return await self.preparer.from_source(source)

    @serve.batch(max_batch_size=SERVE_MAX_BATCH_SIZE, batch_wait_timeout_s=SERVE_BATCH_WAIT_MS / 1000)
    async def _score_batch(self, items: list[tuple[str, np.ndarray, str]]) -> list[ModelScore]:
        """One batch for every model: (model name, its pixels, caption) items, one model call per
        model in the batch. One queue keeps ``user_config``'s size and wait the whole story, and
        lets a pair's calls for several models leave in the same window; the models share the
        replica's device, so separate queues would only take turns on it."""
        by_model: dict[str, list[int]] = {}
        for position, (name, _, _) in enumerate(items):
            by_model.setdefault(name, []).append(position)
        for positions in by_model.values():
            self.batch_sizes.observe(len(positions))
        return await asyncio.to_thread(self._score_by_model, items, by_model)

    def _score_by_model(self, items: list[tuple[str, np.ndarray, str]],
                        by_model: dict[str, list[int]]) -> list[ModelScore]:
        scores: list[ModelScore] = [None] * len(items)  # type: ignore[list-item]  # each position is filled below
        for name, positions in by_model.items():
            result = self.scorers[name].score(np.stack([items[p][1] for p in positions]),
                                              [items[p][2] for p in positions])
            similarity = similarity_from_cosine(result.cosine)
            for row, position in enumerate(positions):
                probability = None if result.probability is None else float(result.probability[row])
                scores[position] = ModelScore(similarity=float(similarity[row]), cosine=float(result.cosine[row]),
                                              probability=probability)
        return scores


Port = Annotated[int, Field(ge=1, le=65535)]


class ServeArgs(BaseModel):
    """The ``args`` of a Serve config's tis-ray application (see deploy/serve-*.yaml), typed.

    Serve validates a config's ``args`` against this model before it calls `build_app`, so a
    wrong type or an unknown key fails the deploy with the field's name; ``tis-ray serve``
    builds one from its flags. Unset fields take the service's defaults.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = DEFAULT_MODEL
    # Several models in each replica, the first the default: ``[{name, model, dtype}, ...]``
    # (``dtype`` optional: the app's). Give `model` or `models`, not both.
    models: tuple[ServedModel, ...] = ()
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

    @model_validator(mode="after")
    def _one_way_to_name_models(self) -> "ServeArgs":
        if self.models and "model" in self.model_fields_set:
            raise ValueError("give `model` (one model) or `models` (several), not both")
        names = [served.name for served in self.models]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"each of `models` needs its own name: {', '.join(twice)} named twice")
        return self

    def service_options(self) -> dict:
        """`ScoringService` constructor arguments; ``ValueError`` for a bad allowlist entry.

        The policy is built here, where a bad entry is one clear error before any replica
        starts; the API key comes from ``TIS_API_KEY`` where the app is built.
        """
        return dict(
            **(dict(models=self.models) if self.models else dict(model=self.model)),
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


def service_deployment(user_config: dict, replica_gpus: float) -> serve.Deployment:
    """The deployment ``tis-ray serve`` runs: batching from `user_config`, and `replica_gpus`
    reserved by each replica (`pool_sizing.serve_replica_gpus`), so that Ray places replicas on
    GPUs it knows they hold. A Serve config says the same in its ``ray_actor_options``."""
    return ScoringService.options(  # type: ignore[attr-defined]  # a Deployment at run time
        ray_actor_options={"num_gpus": replica_gpus}, user_config=user_config)


def build_app(args: ServeArgs) -> serve.Application:
    """The application for ``serve run`` / ``serve deploy`` (``import_path: tis_ray.serve:build_app``).

    Serve turns the config's ``args`` into a `ServeArgs` (the type hint says so). Batch size
    and wait come from the deployment's ``user_config`` in the same file.
    """
    return ScoringService.bind(**args.service_options())  # type: ignore[attr-defined]  # a Deployment at run time
