"""Ray Serve wiring: the shared `ClipScorer` behind a FastAPI ingress.

Pairs from many requests are batched together by ``@serve.batch`` (size and wait
set by ``user_config`` and changed live by ``reconfigure``). Images are fetched
only over http(s) and only from public addresses unless an allowlist says
otherwise (see `netguard`). Deployed by ``tis-ray serve`` or by ``serve deploy``
with the config files in ``deploy/``.
"""


import asyncio
import functools
import logging
import os
import secrets
import signal
import time
from dataclasses import dataclass

import numpy as np
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from ray import serve
from ray.serve import metrics

from . import __version__, errors
from .config import (
    SERVE_BATCH_WAIT_MS,
    SERVE_MAX_BATCH_SIZE,
    SERVE_MAX_ONGOING_REQUESTS,
    SERVE_MAX_PIXELS,
    SERVE_MAX_QUEUED_REQUESTS,
    FetchConfig,
    ModelConfig,
)
from .errors import RequestRejected, RowError
from .fetch import ImageFetcher
from .http_api import (
    MAX_CAPTION_CHARS,
    ModelInfo,
    Pair,
    PairResult,
    ScoreRequest,
    ScoreResponse,
    public_error_text,
)
from .netguard import DEFAULT_PORTS, AddressPolicy, guarded_fetcher_parts
from .prepare import ImagePreparer
from .records import check_caption
from .scorer import make_scorer, similarity_from_cosine
from .sources import classify_image_ref

logger = logging.getLogger("ray.serve")

app = FastAPI(
    title="tis-ray",
    version=__version__,
    description="How well does a caption describe an image? CLIP similarity in [0, 1], per pair.",
)


@dataclass(frozen=True)
class ServiceLimits:
    max_pairs: int = 256
    max_body_bytes: int = 32 * 1024 * 1024


def _rejection(rejected: RequestRejected) -> JSONResponse:
    return JSONResponse({"detail": rejected.detail}, status_code=rejected.status)


def _check_content_type(request: Request) -> None:
    # Defined above the class: @serve.ingress pickles the app, and with it the globals it sees then.
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise RequestRejected.at(
            415, ["header", "Content-Type"], f"send the body as application/json, not {media_type or 'no type'}",
            "unsupported_media_type",
        )


def _openapi(served: FastAPI, max_pairs: int) -> dict:
    """FastAPI's schema, plus `ScoreRequest` with this replica's pair limit.

    /v1/score reads its body itself (to cap its size), so FastAPI does not see the model.
    """
    from fastapi.openapi.utils import get_openapi

    if served.openapi_schema is not None:
        return served.openapi_schema
    schema = get_openapi(title=served.title, version=served.version, description=served.description,
                         routes=served.routes)
    request_schema = ScoreRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    request_schema["properties"]["pairs"]["maxItems"] = max_pairs
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(request_schema.pop("$defs", {}))
    components["ScoreRequest"] = request_schema
    served.openapi_schema = schema
    return schema


app.openapi = functools.partial(_openapi, app, ServiceLimits().max_pairs)


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
        app.openapi_schema = None
        app.openapi = functools.partial(_openapi, app, self.limits.max_pairs)
        policy = policy or AddressPolicy()
        self.preparer = ImagePreparer(
            self.fetch,
            self.scorer.preprocess,
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

    @app.post(
        "/v1/score",
        response_model=ScoreResponse,
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ScoreRequest"}}}},
            "responses": {"401": {"description": "API key missing or wrong"}, "413": {"description": "body too large"},
                          "415": {"description": "the body is not sent as application/json"},
                          "422": {"description": "malformed request; `detail` names the field"}},
        },
    )
    async def score(self, request: Request):
        """Score each pair; a pair that cannot be scored gets an error, the others are scored."""
        started = time.monotonic()
        try:
            self._check_api_key(request)
            _check_content_type(request)
            body = await self._read_body(request)
            pairs = self._parse(body)
        except RequestRejected as rejected:
            return _rejection(rejected)
        results = await asyncio.gather(*(self._score_pair(pair) for pair in pairs))
        failed = sum(1 for r in results if r.error)
        logger.info("scored %d pairs (%d errors) in %.0f ms", len(results), failed, 1000 * (time.monotonic() - started))
        return ScoreResponse(model=self.scorer.model_id, results=results)

    def _check_api_key(self, request: Request) -> None:
        if not self.api_key:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise RequestRejected.at(
                401, ["header", "Authorization"], "missing or wrong API key (send 'Authorization: Bearer <key>')",
                "unauthorized",
            )

    async def _read_body(self, request: Request) -> bytes:
        limit = self.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise RequestRejected.at(413, ["body"], f"the body is over {limit} bytes", "too_large")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise RequestRejected.at(413, ["body"], f"the body is over {limit} bytes", "too_large")
        return bytes(body)

    def _parse(self, body: bytes) -> list[Pair]:
        try:
            parsed = ScoreRequest.model_validate_json(body)
        except ValidationError as exc:
            detail = jsonable_encoder(exc.errors(include_url=False, include_context=False, include_input=False))
            for item in detail:
                item["loc"] = ["body", *item["loc"]]
            raise RequestRejected(422, detail) from None
        if len(parsed.pairs) > self.limits.max_pairs:
            raise RequestRejected.at(
                422, ["body", "pairs"], f"{len(parsed.pairs)} pairs is over the limit of {self.limits.max_pairs}",
                "too_many",
            )
        return parsed.pairs

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
            return await self.preparer.from_bytes(pair.image_bytes)
        source = classify_image_ref(pair.image_url, base_dir="/")
        if source.kind != "http":
            raise RowError(errors.UNSUPPORTED_SCHEME, "the service fetches only http and https URLs")
        return await self.preparer.from_source(source)

    @serve.batch(max_batch_size=SERVE_MAX_BATCH_SIZE, batch_wait_timeout_s=SERVE_BATCH_WAIT_MS / 1000)
    async def _score_batch(self, items: list[tuple[np.ndarray, str]]) -> list[float]:
        self.batch_sizes.observe(len(items))
        pixels = np.stack([pixels for pixels, _ in items])
        result = await asyncio.to_thread(self.scorer.score, pixels, [caption for _, caption in items])
        return [float(c) for c in result.cosine]


APP_ARGS = ("model", "device", "dtype", "allow_hosts", "allowlist_only", "allow_ports", "allow_wide_networks",
            "max_pairs", "max_body_bytes", "timeout_s", "max_image_bytes", "max_pixels", "ignore_opt_out",
            "user_agent")


def service_options(args: dict) -> dict:
    """`ScoringService` constructor arguments from the app's ``args`` (see `build_app`)."""
    unknown = set(args) - set(APP_ARGS)
    if unknown:
        raise ValueError(f"unknown tis-ray app args: {', '.join(sorted(unknown))} (known: {', '.join(APP_ARGS)})")
    fetch, limits = FetchConfig(), ServiceLimits()
    return dict(
        model=args.get("model", ModelConfig().model),
        device=args.get("device", "auto"),
        dtype=args.get("dtype", "auto"),
        # Built here, where a bad entry is one clear error before any replica starts.
        policy=AddressPolicy.from_strings(
            args.get("allow_hosts") or (), bool(args.get("allowlist_only", False)),
            ports=(*DEFAULT_PORTS, *(int(p) for p in args.get("allow_ports") or ())),
            allow_wide_networks=bool(args.get("allow_wide_networks", False)),
        ),
        api_key=os.environ.get("TIS_API_KEY") or None,
        fetch=FetchConfig(timeout_s=float(args.get("timeout_s", fetch.timeout_s)),
                          max_bytes=int(args.get("max_image_bytes", fetch.max_bytes)),
                          max_pixels=int(args.get("max_pixels", SERVE_MAX_PIXELS)),
                          honor_opt_out=not args.get("ignore_opt_out", False),
                          user_agent=str(args.get("user_agent") or fetch.user_agent)),
        limits=ServiceLimits(max_pairs=int(args.get("max_pairs", limits.max_pairs)),
                             max_body_bytes=int(args.get("max_body_bytes", limits.max_body_bytes))),
    )


def build_app(args: dict) -> serve.Application:
    """The application for ``serve run`` / ``serve deploy`` (``import_path: tis_ray.serve:build_app``).

    ``args`` are `APP_ARGS`; the API key comes from ``TIS_API_KEY`` where the app is built.
    Batch size and wait come from the deployment's ``user_config`` in the same file.
    """
    return ScoringService.bind(**service_options(args))


def run_foreground(args: dict, *, host: str, port: int, max_batch_size: int, batch_wait_ms: float) -> None:
    """Serve on host:port until Ctrl-C or SIGTERM (even during start-up), then shut Serve down."""
    signal.signal(signal.SIGTERM, _interrupt)
    user_config = {"max_batch_size": max_batch_size, "batch_wait_ms": batch_wait_ms}
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(ScoringService.options(user_config=user_config).bind(**service_options(args)),
                  name="tis-ray", route_prefix="/")
        print(f"tis-ray serving {args.get('model')} at http://{host}:{port} (docs at /docs); Ctrl-C stops",
              flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("tis-ray: shutting down", flush=True)
    finally:
        serve.shutdown()


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
