"""Which 5G (or 4G) interface a flow belongs to, for the protocol mix an analyst sees first.

From the flow alone, after the session table has attributed it: GTP-U is N3
(N9 looks the same without topology), PFCP N4, NGAP N2, HTTP/2 the SBI, a UE's
untunnelled flow N6; S1-AP and GTPv2-C are 4G S1/S11/S5, Diameter its own.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

# (plane, application hints, ports) in priority order; ports catch flows whose first packets were not recognised
_BY_APPLICATION: list[tuple[str, tuple[str, ...], tuple[int, ...]]] = [
    ("N4", ("pfcp",), (8805,)),
    ("N2", ("ngap",), (38412,)),
    ("S1/S11/S5", ("s1ap", "gtpc"), (36412, 2123)),
    ("Diameter", ("diameter",), (3868,)),
    ("SBI", ("http2",), ()),
]


def planes(flows: pa.Table) -> pa.Array:
    """The ``plane`` column: N2, N3, N4, SBI, N6, S1/S11/S5, Diameter or other."""
    app = flows.column("application_hint")
    ports = [flows.column("src_port"), flows.column("dst_port")]
    conds, names = [pc.equal(flows.column("tunnel_type"), "gtpu")], ["N3"]
    for plane, apps, known in _BY_APPLICATION:
        cond = pc.is_in(app, pa.array(apps, pa.string()))
        if known:
            cond = pc.or_kleene(cond, pc.or_kleene(*(pc.is_in(p, pa.array(known, pa.uint16())) for p in ports)))
        conds.append(cond)
        names.append(plane)
    conds.append(pc.is_valid(flows.column("session_id")))  # a UE's flow outside the tunnel
    names.append("N6")
    conds = [pc.fill_null(c, False) for c in conds]
    chosen = pc.case_when(pa.StructArray.from_arrays([c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c
                                                      for c in conds], names=[str(i) for i in range(len(conds))]),
                          *[pa.scalar(n) for n in names], pa.scalar("other"))
    return chosen


def with_planes(flows: pa.Table) -> pa.Table:
    i = flows.schema.get_field_index("plane")
    return flows.set_column(i, flows.schema.field(i), planes(flows)) if flows.num_rows else flows
