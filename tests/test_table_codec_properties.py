"""Property: any casacore table python-casacore can make goes into a zarr group as columns and
comes back bit for bit, unless it is one of the documented raw cases.

Hypothesis draws a table description (every value type, scalar / fixed / variable-shaped /
record columns, the storage managers that hold them, hypercolumns, column keywords with units
and measures, typed nested table keywords, subtables referenced from keywords and record cells
at any depth), row counts from none up, cell shapes that change between rows, undefined cells,
NaN payloads and long strings; the table is built with python-casacore, encoded, decoded, and
compared with ``test_table_codec.assert_tables_equal`` (description, private keywords, typed
keywords, data-manager layout with hypercubes, every cell's definedness, shape and bits, the
bytes of record cells, subtables). ``--full`` runs the long hypothesis profile.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import zarr

hypothesis = pytest.importorskip("hypothesis")
from casacore import tables as ct  # noqa: E402
from hypothesis import given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from factor_archive.ms import casacore_table  # noqa: E402
from factor_archive.ms.casacore_table import casacore_read, common, keywords  # noqa: E402
from test_table_codec import assert_tables_equal  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# casacore value type -> numpy type of its cells
VTYPES = {"boolean": bool, "uchar": np.uint8, "short": np.int16, "ushort": np.uint16,
          "int": np.int32, "uint": np.uint32, "int64": np.int64, "float": np.float32,
          "double": np.float64, "complex": np.complex64, "dcomplex": np.complex128, "string": str}
TILED = ("TiledColumnStMan", "TiledShapeStMan", "TiledCellStMan")  # no strings, no records
PLAIN = ("StandardStMan", "IncrementalStMan", "StManAipsIO")
# Raw cases the drawn tables may hit, and the reason each must give (formats/zarr.md).
RAW_REASONS = {"out_of_order": "writing the rows in order does not recreate"}
NAMES = ["TIME", "DATA", "FLAG", "UVW", "ragged", "shaped", "row", "zarr.json", "a b", "50%",
         "__x", "Col-ø", "x"]
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)


# --------------------------------------------------------------------------- typed values


def _key() -> st.SearchStrategy[str]:
    return st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,9}", fullmatch=True)


def _nan32(payload: int) -> np.float32:
    return np.array([0x7FC00000 | (payload & 0x3FFFFF)], np.uint32).view(np.float32)[0]


def _nan64(payload: int) -> float:
    return float(np.array([0x7FF8000000000000 | (payload & 0x7FFFFFFFFFFFF)], np.uint64).view(np.float64)[0])


def _array_value() -> st.SearchStrategy:
    """A numpy array of a type python-casacore writes with that exact type."""
    def make(args):
        t, shape, seed = args
        rng = np.random.default_rng(seed)
        if t == "str":
            return np.array([f"s{v}" * int(v % 4) for v in rng.integers(0, 99, shape).reshape(-1)],
                            dtype=str).reshape(shape)
        return _random(rng, np.dtype(t), shape)

    types = st.sampled_from(["bool", "int16", "int32", "uint32", "int64", "float32", "float64",
                             "complex64", "complex128", "str"])
    shapes = st.lists(st.integers(0, 3), min_size=1, max_size=3).map(tuple)
    return st.tuples(types, shapes, st.integers(0, 2**32 - 1)).map(make)


def _scalar_value() -> st.SearchStrategy:
    """A scalar of every keyword type python-casacore writes exactly (quiet NaNs with payloads)."""
    return st.one_of(
        st.booleans(),
        st.integers(-2**15, 2**15 - 1).map(np.int16),
        st.integers(-2**31, 2**31 - 1).map(np.int32),
        st.integers(0, 2**32 - 1).map(np.uint32),
        st.integers(-2**63, 2**63 - 1),
        st.floats(width=32, allow_nan=False).map(np.float32),
        st.integers(0, 2**22).map(_nan32),
        st.floats(allow_nan=False),
        st.integers(0, 2**51).map(_nan64),
        st.tuples(st.floats(width=32), st.floats(width=32)).map(lambda c: np.complex64(complex(*c))),
        st.tuples(st.floats(), st.floats()).map(lambda c: complex(*c)),
        TEXT.filter(lambda s: not s.startswith("Table: ")),
        st.text(max_size=3).map(lambda s: "long " * 400 + s),
    )


def _record(refs: list[str]) -> st.SearchStrategy[dict]:
    """Nested typed records; ``refs`` are tables a field may refer to ('Table: ...')."""
    leaf = st.one_of(_scalar_value(), _array_value(),
                     *([st.sampled_from(refs).map(lambda p: "Table: " + p)] if refs else []))
    return st.recursive(st.dictionaries(_key(), leaf, max_size=4),
                        lambda inner: st.dictionaries(_key(), st.one_of(leaf, inner), max_size=4),
                        max_leaves=12)


def _random(rng, dtype: np.dtype, shape: tuple) -> np.ndarray:
    """Random cells with the odd values mixed in: NaNs with payloads (signalling ones too),
    -0.0, infinities, denormals, the extremes of integers."""
    n = int(np.prod(shape, dtype=np.int64))
    if dtype.kind == "b":
        return (rng.random(n) < 0.5).reshape(shape)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        a = rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True)
        a[rng.random(n) < 0.1] = info.max
        return a.reshape(shape)
    real = np.dtype(np.float32 if dtype in (np.float32, np.complex64) else np.float64)
    m = n * (2 if dtype.kind == "c" else 1)
    a = rng.standard_normal(m).astype(real)
    bits = a.view(np.uint32 if real == np.float32 else np.uint64)
    odd = rng.random(m)
    if real == np.float32:
        specials = np.array([0x7FC00001, 0x7FA00002, 0xFFC0BEEF, 0x80000000, 0x7F800000, 0x00000001],
                            np.uint32)
    else:
        specials = np.array([0x7FF8000000000001, 0x7FF4000000000002, 0x8000000000000000,
                             0xFFF0000000000000, 0x0000000000000001], np.uint64)
    pick = odd < 0.15
    bits[pick] = specials[rng.integers(0, len(specials), int(pick.sum()))]
    return a.view(dtype).reshape(shape)


def _strings(rng, shape: tuple) -> np.ndarray:
    alphabet = list("abcxyz ,;:\n\t") + ["é", "ø", "中", "😀", "\u200b"]
    n = int(np.prod(shape, dtype=np.int64))
    out = []
    for _i in range(n):
        k = int(rng.integers(0, 2000)) if rng.random() < 0.05 else int(rng.integers(0, 12))
        out.append("".join(rng.choice(alphabet, k)))
    return np.array(out, dtype=object).reshape(shape)


# --------------------------------------------------------------------------- table specs


@dataclass
class ColumnSpec:
    name: str
    vtype: str
    kind: str  # scalar | fixed | variable | record
    dm: str
    shape: tuple = ()  # fixed cells
    ndim: int = -1  # variable cells: the description's ndim (-1: any)
    shapes: list = field(default_factory=list)  # variable cells: the shapes they take
    defined: float = 1.0  # variable cells: the share of rows that are written
    order: str = "rows"  # the order rows are written in: rows | reverse
    hyper: bool = False  # defined as a hypercolumn (private keywords)
    keywords: dict = field(default_factory=dict)
    comment: str = ""
    seed: int = 0


@dataclass
class TableSpec:
    nrows: int
    endian: str
    columns: list
    keywords: dict
    subtables: list  # names; the first may hold INNER
    inner: bool
    info: dict
    seed: int


@st.composite
def column_specs(draw, name: str) -> ColumnSpec:
    kind = draw(st.sampled_from(["scalar", "fixed", "variable", "variable", "record"]))
    if kind == "record":
        return ColumnSpec(name, "record", kind, draw(st.sampled_from(PLAIN)), seed=draw(st.integers(0, 2**31)))
    vtype = draw(st.sampled_from(sorted(VTYPES)))
    if kind == "scalar":
        dm = draw(st.sampled_from(PLAIN))
    else:
        dm = draw(st.sampled_from(PLAIN + (() if vtype == "string" else TILED)))
    spec = ColumnSpec(name, vtype, kind, dm, seed=draw(st.integers(0, 2**31)), comment=draw(TEXT))
    dims = st.integers(0, 4)
    if kind == "fixed":
        if dm in ("TiledShapeStMan", "TiledCellStMan"):
            dm = spec.dm = "TiledColumnStMan"
        spec.shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))  # casacore: >= 1
    elif kind == "variable":
        if dm == "TiledColumnStMan":
            dm = spec.dm = "TiledShapeStMan"
        tiled = dm in TILED
        ndim = draw(st.integers(1, 3))
        spec.ndim = ndim if tiled or draw(st.booleans()) else -1
        one_ndim = st.lists(st.integers(1 if tiled else 0, 4), min_size=ndim, max_size=ndim).map(tuple)
        any_ndim = st.lists(dims, min_size=1, max_size=3).map(tuple)
        spec.shapes = draw(st.lists(one_ndim if spec.ndim > 0 else any_ndim, min_size=1, max_size=4,
                                    unique=True))
        spec.defined = draw(st.sampled_from([1.0, 1.0, 0.7, 0.0]))
        spec.order = draw(st.sampled_from(["rows", "rows", "rows", "reverse"]))
    spec.hyper = dm in ("TiledColumnStMan", "TiledShapeStMan") and draw(st.booleans())
    spec.keywords = draw(st.one_of(
        st.just({}),
        st.just({"QuantumUnits": np.array(["s"]), "MEASINFO": {"type": "epoch", "Ref": "UTC"}}),
        st.just({"QuantumUnits": np.array(["rad", "rad"]), "MEASINFO": {"type": "direction", "Ref": "J2000"}}),
        _record([])))
    return spec


@st.composite
def table_specs(draw) -> TableSpec:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=6, unique=True))
    columns = [draw(column_specs(n)) for n in names]
    subtables = draw(st.lists(st.sampled_from(["SUB", "ANTENNA", "HISTORY"]), max_size=2, unique=True))
    endian = draw(st.sampled_from(["little", "big"]))
    for c in columns:
        if endian == "big":  # casacore cannot write some empty cells into a big-endian table
            c.shapes = list(dict.fromkeys(tuple(max(1, x) for x in s) for s in c.shapes))
    return TableSpec(
        nrows=draw(st.sampled_from([0, 1, 2, 7, 23, 64])),
        endian=endian,
        columns=columns,
        keywords=draw(_record([])),
        subtables=subtables,
        inner=bool(subtables) and draw(st.booleans()),
        info={"type": draw(st.sampled_from(["", "Measurement Set", "Custom"])), "subType": "",
              "readme": draw(st.sampled_from(["", "one line\n", "two\nlines\n"]))},
        seed=draw(st.integers(0, 2**31)),
    )


# --------------------------------------------------------------------------- building


def _default(vtype: str):
    return {"string": "", "boolean": False, "complex": 0j, "dcomplex": 0j}.get(vtype, 0)


def _cells(spec: ColumnSpec, rng, shape: tuple):
    if spec.vtype == "string":
        return _strings(rng, shape)
    return _random(rng, np.dtype(VTYPES[spec.vtype]), shape)


def _put(t, name: str, r: int, value) -> None:
    if isinstance(value, np.ndarray) and value.dtype == object:
        value = np.array(value.tolist(), dtype=str).reshape(value.shape) if value.size else np.zeros(value.shape, str)
    t.putcell(name, r, value)


def build(spec: TableSpec, path: Path, records: dict) -> Path:
    """The table a spec describes, written with python-casacore: its columns, then its
    subtables, then the keywords and record cells (which may refer to the subtables)."""
    _build_main(spec, path)
    for name in spec.subtables:
        with ct.table(str(path / name), ct.maketabdesc([ct.makescacoldesc("ID", 0),
                                                         ct.makearrcoldesc("V", 0.0, ndim=1)]),
                      nrow=3, ack=False) as sub:
            sub.putcol("ID", np.arange(3, dtype=np.int32))
            sub.putcell("V", 1, np.arange(4.0))
            sub.putkeyword("WHAT", np.float32(2.5))
    if spec.inner:
        first = path / spec.subtables[0]
        with ct.table(str(first / "INNER"), ct.maketabdesc([ct.makescacoldesc("Y", 0.0)]), nrow=2,
                      ack=False) as inner:
            inner.putcol("Y", [1.5, -2.5])
        with ct.table(str(first), readonly=False, ack=False) as sub:
            sub.putkeyword("INNER", "Table: " + str((first / "INNER").resolve()))
    with common._table(str(path), readonly=False, ack=False) as t:
        for c in spec.columns:
            if c.kind == "record":
                for r, value in enumerate(records[c.name]):
                    if value is not None:
                        t.putcell(c.name, r, value)
        for k, v in spec.keywords.items():
            t.putkeyword(k, v)
        for i, name in enumerate(spec.subtables):
            ref = "Table: " + str((path / name).resolve())
            if i == 0:
                t.putkeyword(name, ref)  # referenced directly; the second one in a nested record
            else:
                t.putkeyword("NESTED", {"deeper": {"ref": ref, "n": np.int32(i)}})
        if spec.inner:
            t.putkeyword("INNER", "Table: " + str((path / spec.subtables[0] / "INNER").resolve()))
    return path


def _build_main(spec: TableSpec, path: Path) -> None:
    cds, dminfo, hyper = [], {}, {}
    plain_dm: dict[str, list] = {}
    for i, c in enumerate(spec.columns):
        kw = {"keywords": c.keywords, "comment": c.comment}
        if c.kind == "record":
            cd = ct.makescacoldesc(c.name, {}, valuetype="record", **kw)
        elif c.kind == "scalar":
            cd = ct.makescacoldesc(c.name, _default(c.vtype), valuetype=c.vtype, **kw)
        elif c.kind == "fixed":
            cd = ct.makearrcoldesc(c.name, _default(c.vtype), valuetype=c.vtype, shape=list(c.shape),
                                   options=4, **kw)
        else:
            cd = ct.makearrcoldesc(c.name, _default(c.vtype), valuetype=c.vtype, ndim=c.ndim, **kw)
        cds.append(cd)
        if c.dm in TILED:
            dm = f"Tiled{i}"
            ndim = len(c.shape) if c.kind == "fixed" else c.ndim
            dminfo[f"*{len(dminfo) + 1}"] = {"TYPE": c.dm, "NAME": dm, "COLUMNS": [c.name],
                                             "SPEC": {"DEFAULTTILESHAPE": [2] * ndim + [8]}}
            if c.hyper:
                hyper[dm] = {"HCndim": ndim + 1, "HCdatanames": [c.name]}
        else:
            plain_dm.setdefault(c.dm, []).append(c.name)
    for dm, names in plain_dm.items():
        dminfo[f"*{len(dminfo) + 1}"] = {"TYPE": dm, "NAME": dm, "COLUMNS": names, "SPEC": {}}
    desc = ct.maketabdesc(cds)
    if hyper:
        desc["_define_hypercolumn_"] = hyper
    t = common._table(str(path), desc, nrow=spec.nrows, dminfo=dminfo, ack=False, endian=spec.endian)
    try:
        t.putinfo({**spec.info, "readme": spec.info["readme"].rstrip("\n")})
        for c in spec.columns:
            rng = np.random.default_rng(c.seed)
            n = spec.nrows
            if c.kind == "scalar" and n:
                v = _cells(c, rng, (n,))
                t.putcol(c.name, [str(s) for s in v] if c.vtype == "string" else v)
            elif c.kind == "fixed" and n:
                v = _cells(c, rng, (n,) + c.shape)
                t.putcol(c.name, np.array(v.tolist(), dtype=str).reshape(v.shape) if c.vtype == "string" else v)
            elif c.kind == "variable":
                rows = range(n - 1, -1, -1) if c.order == "reverse" else range(n)
                pick = rng.random(n) < c.defined
                which = rng.integers(0, len(c.shapes), n)
                for r in rows:
                    if pick[r]:
                        _put(t, c.name, r, _cells(c, rng, c.shapes[which[r]]))
    finally:
        t.close()


def raw_cases(spec: TableSpec) -> set[str]:
    """The documented raw cases this table may hit (which exactly is casacore's business)."""
    out = set()
    for c in spec.columns:
        if c.kind == "variable" and c.dm == "TiledShapeStMan" and c.order == "reverse" and spec.nrows > 1:
            out.add("out_of_order")
    return out


# --------------------------------------------------------------------------- properties


@settings(deadline=None)
@given(spec=table_specs(), data=st.data())
def test_any_table_is_stored_as_columns_and_comes_back_bit_for_bit(spec, data):
    work = Path(tempfile.mkdtemp(prefix="table-codec-prop-"))
    try:
        src = work / "t.tab"
        refs = [str((src / n).resolve()) for n in spec.subtables]
        if spec.inner:
            refs.append(str((src / spec.subtables[0] / "INNER").resolve()))
        records = {c.name: [data.draw(st.one_of(st.none(), _record(refs)), label=f"{c.name}[{r}]")
                            for r in range(spec.nrows)]
                   for c in spec.columns if c.kind == "record"}
        note(repr(spec))
        build(spec, src, records)
        store = zarr.storage.LocalStore(str(work / "s.zarr"))
        group = zarr.open_group(store, mode="w").create_group("T")
        # As the commands run them (every casacore write in a worker process), or in this process.
        session = casacore_table.worker_session() if data.draw(st.booleans(), label="in a worker session") \
            else contextlib.nullcontext()
        with session:
            try:
                info = casacore_table.encode_table(src, group, row_block=data.draw(st.sampled_from([None, 5])))
            except casacore_table.RawTableRequired as e:
                allowed = [RAW_REASONS[k] for k in raw_cases(spec)]
                assert allowed and any(a in e.reason for a in allowed), f"unexpected raw: {e.reason}"
                assert list(group.keys()) == []
                return
            assert info["raw_fallback"] is False
            assert casacore_table.verify_table(group, name="T") == []
            out = work / "out.tab"
            casacore_table.decode_table(group, out)
        assert_tables_equal(src, out)
        checksum = casacore_table.table_content_sha256
        assert checksum(out) == checksum(src) == info["content_sha256"]
    finally:
        shutil.rmtree(work, ignore_errors=True)


@settings(deadline=None)
@given(values=st.lists(st.one_of(st.none(), _record([])), min_size=1, max_size=6))
def test_record_cells_parse_to_their_exact_types_and_serialize_back(values):
    """Every record python-casacore writes into a cell: the stored bytes parse into a typed record
    that serializes back to the same bytes and decodes (as the decoder writes it) to the value."""
    from factor_archive.ms.casacore_record import parse_cell, serialize_cell

    work = Path(tempfile.mkdtemp(prefix="table-codec-rec-"))
    try:
        p = work / "r.tab"
        with common._table(str(p), ct.maketabdesc([ct.makescacoldesc("R", {}, valuetype="record")]),
                       nrow=len(values), ack=False) as t:
            for r, v in enumerate(values):
                if v is not None:
                    t.putcell("R", r, v)
            t.flush()
            cells = casacore_read._StoredRecords(t, p, ["R"])
            try:
                for r, v in enumerate(values):
                    raw = cells.cell("R", r)
                    assert (raw is None) == (v is None)
                    if raw is None:
                        continue
                    rec = parse_cell(raw)
                    assert serialize_cell(rec) == raw
                    assert _typed(keywords._dec_kw(rec, lambda rel: rel)) == _typed(t.getcell("R", r))
                    assert _types(rec) == _types_of(v)
            finally:
                cells.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _typed(v):
    """A value with its bits, for comparing what python-casacore hands back."""
    if isinstance(v, dict) and set(v) == {"shape", "array"}:  # python-casacore's N-D string array
        return ("strings", tuple(v["shape"]), list(v["array"]))
    if isinstance(v, dict):
        return {k: _typed(x) for k, x in v.items()}
    if isinstance(v, np.ndarray) and v.dtype.kind == "U":
        return ("strings", v.shape, v.reshape(-1).tolist())
    if isinstance(v, np.ndarray):
        return (v.dtype.str, v.shape, v.tobytes())
    if isinstance(v, list):  # python-casacore's 1-D string array
        return ("strings", (len(v),), v)
    if isinstance(v, (float, np.floating)):
        return ("f", np.float64(v).tobytes())
    if isinstance(v, (complex, np.complexfloating)):
        return ("c", np.complex128(v).tobytes())
    return v


_NP_TYPE = {np.bool_: "Bool", bool: "Bool", np.int16: "Short", np.int32: "Int", np.uint32: "uInt",
            np.int64: "Int64", int: "Int64", np.float32: "Float", float: "Double", np.float64: "Double",
            np.complex64: "Complex", complex: "DComplex", np.complex128: "DComplex", str: "String"}
_ARRAY_TYPE = {"b1": "Bool", "i2": "Short", "i4": "Int", "u4": "uInt", "i8": "Int64", "f4": "Float",
               "f8": "Double", "c8": "Complex", "c16": "DComplex"}


def _types(rec: dict):
    """Field name -> casacore type of a tagged record, nested."""
    return {k: _types(v) if v["type"] == "Record" else v["type"] for k, v in rec["fields"]}


def _types_of(value: dict):
    """Field name -> the casacore type python-casacore gives each Python value it is handed."""
    out = {}
    for k, v in value.items():
        if isinstance(v, dict):
            out[k] = _types_of(v)
        elif isinstance(v, np.ndarray):
            out[k] = "String array" if v.dtype.kind == "U" else _ARRAY_TYPE[v.dtype.str[1:]] + " array"
        elif isinstance(v, str) and v.startswith("Table: "):
            out[k] = "Table"
        else:
            out[k] = _NP_TYPE[type(v)]
    return out
