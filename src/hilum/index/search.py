"""Query -> SQL. The one translation used by C-FIND and QIDO-RS."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Integer,
    Select,
    and_,
    cast,
    exists,
    false,
    func,
    or_,
    select,
    true,
)

from hilum.domain.attributes import BY_KEYWORD, INTEGER_VRS, IndexedAttribute, Level
from hilum.domain.errors import InvalidQuery
from hilum.domain.query import Constraint, MatchKind, Query, constraint_for
from hilum.index.models import Instance, Patient, Series, Study

P = Patient.__table__
S = Study.__table__
SE = Series.__table__
I = Instance.__table__  # noqa: E741

TABLE = {Level.PATIENT: P, Level.STUDY: S, Level.SERIES: SE, Level.IMAGE: I}
# Attributes stored backslash-joined that can hold several values (VM > 1).
MULTI_VALUED = frozenset({"ImageType", "OtherPatientNames"})
# Match person names on the folded key columns where the index has one.
PN_KEY_COLUMN = {
    "PatientName": P.c.patient_name_key,
    "ReferringPhysicianName": S.c.referring_physician_name_key,
}


@dataclass(frozen=True, slots=True)
class Hit:
    """One matching entity: its primary key and the values of every indexed keyword."""

    pk: int
    values: dict[str, Any]


def _column(attr: IndexedAttribute) -> Any:
    return TABLE[attr.level].c[attr.column]


def build_select(query: Query) -> Select[Any]:
    level = query.level
    base = TABLE[level]
    columns: list[Any] = [base.c.id.label("_pk")]
    joined = base
    if level.depth >= Level.SERIES.depth and level is Level.IMAGE:
        joined = joined.join(SE, I.c.series_pk == SE.c.id)
    if level.depth >= Level.STUDY.depth and level is not Level.STUDY:
        joined = joined.join(S, SE.c.study_pk == S.c.id)
    if level.depth >= Level.STUDY.depth:
        joined = joined.join(P, S.c.patient_pk == P.c.id)

    counts = visible_patient_counts(query.restrict) if query.count_visible_only else {}
    for attr in BY_KEYWORD.values():
        if attr.level.depth <= level.depth:
            columns.append(counts.get(attr.keyword, _column(attr)).label(attr.keyword))
    stmt = select(*columns).select_from(joined)
    conditions = [
        _condition(c, level, fuzzy=query.fuzzy_person_names, counts=counts) for c in query.constrained()
    ]
    if query.restrict is not None:
        conditions.append(_restriction(query.restrict, level))
    if conditions:
        stmt = stmt.where(and_(*conditions))
    stmt = stmt.order_by(base.c.id)
    if query.offset:
        stmt = stmt.offset(query.offset)
    if query.limit is not None:
        stmt = stmt.limit(query.limit)
    return stmt


def visible_patient_counts(restrict: Any) -> dict[str, Any]:
    """NumberOfPatientRelatedStudies, -Series and -Instances over the studies ``restrict``
    (a caller's study access, a condition on ``studies``) lets through: correlated
    subqueries on ``patients`` that sum the stored study-level aggregates. For callers who
    see only some studies; the others get the stored patient aggregates. The one place these
    counts are restricted, for every list built here (QIDO-RS, the resource lists)."""
    if restrict is None:
        return {}

    def over_visible(value: Any) -> Any:
        visible = select(value).select_from(S).where(S.c.patient_pk == P.c.id, restrict)
        return cast(visible.correlate(P).scalar_subquery(), Integer)

    return {
        "NumberOfPatientRelatedStudies": over_visible(func.count(S.c.id)),
        "NumberOfPatientRelatedSeries": over_visible(func.coalesce(func.sum(S.c.num_series), 0)),
        "NumberOfPatientRelatedInstances": over_visible(func.coalesce(func.sum(S.c.num_instances), 0)),
    }


def _restriction(condition: Any, level: Level) -> ColumnElement[bool]:
    """The caller's study access (a condition on studies) at any query level."""
    if level is Level.PATIENT:
        return exists(select(1).select_from(S).where(S.c.patient_pk == P.c.id, condition))
    return condition


def _condition(
    constraint: Constraint, level: Level, *, fuzzy: bool = False, counts: dict[str, Any] | None = None
) -> ColumnElement[bool]:
    attr = BY_KEYWORD.get(constraint.keyword)
    if attr is None:
        raise InvalidQuery(f"{constraint.keyword} is not a searchable attribute")
    if attr.level.depth > level.depth:
        # PS3.4 C.4.1.2.1: keys below the query level are not matched.
        return true()
    if attr.keyword == "ModalitiesInStudy":
        return _in_study(SE.c.modality, constraint)
    if attr.keyword == "SOPClassesInStudy":
        return _in_study(I.c.sop_class_uid, constraint, via_instances=True)
    if counts and attr.keyword in counts:
        return _match(counts[attr.keyword], constraint)
    column: Any = PN_KEY_COLUMN.get(attr.keyword)
    if column is None:
        column = _column(attr)
        if attr.vr == "PN":  # constraint values are upper-cased (C.2.2.2.1); no key column
            column = func.upper(column)
    if attr.keyword in MULTI_VALUED and constraint.kind in (MatchKind.SINGLE, MatchKind.WILDCARD):
        return _match_any_value(column, constraint)
    if fuzzy and attr.vr == "PN" and constraint.kind in (MatchKind.SINGLE, MatchKind.WILDCARD):
        return _fuzzy_name(column, constraint.values[0])
    return _match(column, constraint)


def missing_studies(conn: Connection, uids: list[str]) -> list[str]:
    """The StudyInstanceUIDs of ``uids`` that no stored study has, in their order."""
    found = conn.execute(select(S.c.study_instance_uid).where(S.c.study_instance_uid.in_(uids)))
    stored = set(found.scalars())
    return [uid for uid in uids if uid not in stored]


def study_rule_condition(match: dict[str, str]) -> ColumnElement[bool]:
    """The studies matching ``match`` (study-level keyword -> DICOM matching value), as one
    condition on ``studies``: the C-FIND matcher, for group rules (auth.group_rules)."""
    return and_(*(_condition(constraint_for(keyword, raw), Level.STUDY) for keyword, raw in match.items()))


def _fuzzy_name(column: Any, value: str) -> ColumnElement[bool]:
    """PS3.18 8.3.4.1 fuzzymatching: a name matches when any of its components (family,
    given, middle, ...; in any representation) starts with the value, ignoring case."""
    stem = _escape_like(value.rstrip("*")).replace("*", "%").replace("?", "_") + "%"
    return or_(*(column.like(prefix + stem, escape="!") for prefix in ("", "%^", "% ", "%=")))


def _match_any_value(column: Any, constraint: Constraint) -> ColumnElement[bool]:
    """PS3.4 C.2.2.2: a multi-valued attribute matches if any one of its values does.

    Values are stored backslash-joined, so look for the value at each position.
    """
    value = constraint.values[0]
    if constraint.kind is MatchKind.WILDCARD:
        pattern = _escape_like(value).replace("*", "%").replace("?", "_")
    else:
        pattern = _escape_like(value)
    sep = "\\"
    return or_(
        column.like(pattern, escape="!"),
        column.like(pattern + sep + "%", escape="!"),
        column.like("%" + sep + pattern, escape="!"),
        column.like("%" + sep + pattern + sep + "%", escape="!"),
    )


def _escape_like(value: str) -> str:
    return value.replace("!", "!!").replace("%", "!%").replace("_", "!_")


def _in_study(column: Any, constraint: Constraint, via_instances: bool = False) -> Any:
    """ModalitiesInStudy / SOPClassesInStudy: any series (instance) of the study matches."""
    inner = select(1).select_from(SE)
    if via_instances:
        inner = inner.join(I, I.c.series_pk == SE.c.id)
    inner = inner.where(SE.c.study_pk == S.c.id, _match(column, constraint))
    return exists(inner)


def _match(column: Any, constraint: Constraint) -> ColumnElement[bool]:
    kind = constraint.kind
    is_int = constraint.vr in INTEGER_VRS
    values: list[Any] = [int(v) for v in constraint.values] if is_int else list(constraint.values)
    if kind is MatchKind.SINGLE:
        return column == values[0]
    if kind is MatchKind.LIST:
        conditions = []
        plain = [v for v in values if not (isinstance(v, str) and ("*" in v or "?" in v))]
        if plain:
            conditions.append(column.in_(plain))
        for pattern in (v for v in values if v not in plain):
            conditions.append(column.like(_like(pattern), escape="\\"))
        return or_(*conditions) if conditions else false()
    if kind is MatchKind.WILDCARD:
        return column.like(_like(values[0]), escape="\\")
    if kind is MatchKind.RANGE:
        parts = []
        if constraint.low is not None:
            parts.append(column >= constraint.low)
        if constraint.high is not None:
            parts.append(column <= constraint.high)
        return and_(*parts)
    return true()


def _like(pattern: str) -> str:
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def search(conn: Connection, query: Query, *, yield_per: int = 500) -> Iterator[Hit]:
    """Stream the hits of ``query`` in stable (primary key) order."""
    stmt = build_select(query)
    result = conn.execution_options(yield_per=yield_per).execute(stmt)
    for row in result.mappings():
        values = dict(row)
        pk = values.pop("_pk")
        yield Hit(pk=pk, values=values)


@dataclass(frozen=True, slots=True)
class StoredInstance:
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    storage_key: str
    size_bytes: int
    study_instance_uid: str
    series_instance_uid: str


def matching_instances(conn: Connection, query: Query) -> list[StoredInstance]:
    """Every stored instance under the entities ``query`` matches (C-MOVE, C-GET, export)."""
    constraints = [
        c for c in query.constrained()
        if (attr := BY_KEYWORD.get(c.keyword)) is not None and attr.level.depth <= query.level.depth
    ]
    if not constraints:
        raise InvalidQuery("a retrieve needs at least one matching key")
    stmt = (
        select(
            I.c.sop_instance_uid,
            I.c.sop_class_uid,
            I.c.transfer_syntax_uid,
            I.c.storage_key,
            I.c.size_bytes,
            S.c.study_instance_uid,
            SE.c.series_instance_uid,
        )
        .select_from(I.join(SE, I.c.series_pk == SE.c.id).join(S, SE.c.study_pk == S.c.id).join(
            P, S.c.patient_pk == P.c.id))
        .where(and_(true(), *(_condition(c, Level.IMAGE) for c in constraints)))
        .where(true() if query.restrict is None else _restriction(query.restrict, Level.IMAGE))
        .order_by(S.c.id, SE.c.series_number, SE.c.id, I.c.instance_number, I.c.id)
    )
    return [StoredInstance(*row) for row in conn.execute(stmt)]
