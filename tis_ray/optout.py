"""Site owners' opt-outs: ``X-Robots-Tag`` directives that say "not for AI use".

The convention img2dataset honours by default (and site owners ask crawlers to
respect): a response header ``X-Robots-Tag: noai`` (or ``noimageai``), optionally
scoped to one crawler (``X-Robots-Tag: tis-ray: noai``). We also honour ``noindex``,
``noimageindex`` and ``none`` (which means ``noindex, nofollow``), as img2dataset
does: a page kept out of search indexes is not one its owner offered for dataset
building. Decided from the headers alone, so an opted-out body is never read.
"""

from __future__ import annotations

from collections.abc import Iterable

OPT_OUT_DIRECTIVES = frozenset({"noai", "noimageai", "noindex", "noimageindex", "none"})
# The crawler name a scoped directive must carry to apply to us ("tis-ray: noai").
USER_AGENT_TOKEN = "tis-ray"


# Directives that carry a value after a colon; anything else before a colon names a crawler.
_VALUED_DIRECTIVES = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})


def opt_out_directive(header_values: Iterable[str]) -> str | None:
    """The first opt-out directive among ``X-Robots-Tag`` values that applies to tis-ray, or None."""
    for value in header_values:
        scope, colon, rest = value.partition(":")
        scope = scope.strip().lower()
        directives = value
        if colon and scope and not any(c in scope for c in ", \t") and scope not in _VALUED_DIRECTIVES:
            if scope != USER_AGENT_TOKEN:
                continue  # another crawler's directives ("googlebot: noindex")
            directives = rest
        for item in directives.split(","):
            name = item.split(":", 1)[0].strip().lower()
            if name in OPT_OUT_DIRECTIVES:
                return name
    return None
