"""Re-identification for lawful investigation (admin, audited, key required).

Pseudonyms are keyed hashes: nobody, the console included, can turn one back
into an identity.  An investigation starts from the identities a warrant
names: the admin sends them with the deployment's pseudonym key, the console
computes their pseudonyms and says where each appears (sessions, signalling
messages), so the case can be followed in the console by pseudonym.  The key
is used for the request only, never stored or logged; the audit log keeps the
case reference, who asked and the pseudonyms, not the identities.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from console.api.deps import Admin, Ctx, client_ip
from ingest.privacy import COLUMNS, Pseudonymizer
from ingest.store.api import Condition
from ingest.store.api import Query as StoreQuery

router = APIRouter(prefix="/api", tags=["privacy"])


class Reidentify(BaseModel):
    case: str = Field(min_length=3, max_length=200, description="the lawful basis: case or warrant reference")
    key: str = Field(min_length=1, max_length=4096, description="the deployment's pseudonym key")
    identities: list[Annotated[str, Field(max_length=256)]] = Field(
        min_length=1, max_length=1000, description="IMSI/SUPI/SUCI (null scheme), MSISDN/GPSI or IMEI values")
    kind: Literal["", "imsi", "msisdn", "imei"] = Field("", description="what bare digits are ('': IMSI when 14-15)")


@router.post("/admin/reidentify", summary="Pseudonyms of the identities a case names, and where each appears "
                                         "(admin; the key is not kept; audited)")
def reidentify(body: Reidentify, request: Request, admin: Admin, ctx: Ctx) -> dict[str, Any]:
    pseudonymizer = Pseudonymizer(body.key.encode())
    rows = []
    for i, identity in enumerate(body.identities):
        pseudonym = pseudonymizer.subscriber(identity, body.kind)
        sessions = ctx.store.search(StoreQuery("sessions", [Condition("subscriber", "eq", pseudonym)],
                                               limit=0)).total
        messages = {name: sum(ctx.store.search(StoreQuery(f"proto_{name}", [Condition(col, "eq", pseudonym)],
                                                          limit=0)).total for col in columns)
                    for name, columns in COLUMNS.items()}
        rows.append({"index": i, "pseudonym": pseudonym, "sessions": sessions,
                     "messages": {k: v for k, v in messages.items() if v}})
    found = sum(1 for r in rows if r["sessions"] or r["messages"])
    ctx.state.audit(admin.username, "reidentify", body.case,
                    {"pseudonyms": [r["pseudonym"] for r in rows], "found": found}, client_ip(request))
    return {"case": body.case, "found": found, "rows": rows,
            "note": "" if found else "no identity appears: check the key (a wrong key gives other pseudonyms)"}
