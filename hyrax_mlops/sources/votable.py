"""Reading the VOTable answers of IVOA services (TAP, SIA, DataLink) inside the download engine:
an answer that is not a VOTable is retried (`InvalidResponse`); a query the service refused
(QUERY_STATUS ERROR) is not (`PermanentError`)."""

from __future__ import annotations

import io

from hyrax_mlops.downloader.engine import InvalidResponse, PermanentError


def read_votable(body: bytes):
    """The parsed VOTable; `InvalidResponse` when the body is not one (a truncated answer)."""
    from astropy.io.votable import parse

    try:
        return parse(io.BytesIO(body), verify="ignore")
    except Exception as exc:
        raise InvalidResponse(f"not a VOTable: {type(exc).__name__}: {exc}"[:300]) from None


def query_result(body: bytes, service: str):
    """A query's VOTable; `PermanentError` naming `service` when it says QUERY_STATUS ERROR."""
    vot = read_votable(body)
    for resource in vot.resources:
        for info in resource.infos:
            if info.name == "QUERY_STATUS" and str(info.value).upper() == "ERROR":
                error = (info.content or "query failed").strip()
                raise PermanentError(f"{service} query refused: {error}"[:300])
    return vot
