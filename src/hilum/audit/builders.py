"""Audit messages for each event Hilum reports, as PS3.15 A.5.3 lays them out. Pure.

Each function takes the parties (:class:`Party`: a user or AE and where it
was) and the subjects, and returns an :class:`AuditMessage`. Section numbers
name the A.5.3 message each follows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hilum.audit import codes
from hilum.audit.codes import Code
from hilum.audit.messages import (
    ActiveParticipant,
    AuditMessage,
    ParticipantObject,
    audit_log_object,
    patient_object,
    query_object,
    study_object,
)


@dataclass(frozen=True, slots=True)
class Party:
    """A user, AE or process taking part, and its network access point."""

    user_id: str
    address: str = ""
    user_name: str = ""
    alternative_user_id: str = ""

    def participant(self, *, requestor: bool, roles: tuple[Code, ...] = ()) -> ActiveParticipant:
        return ActiveParticipant(
            user_id=self.user_id,
            is_requestor=requestor,
            roles=roles,
            alternative_user_id=self.alternative_user_id,
            user_name=self.user_name,
            network_access_point=self.address,
        )


@dataclass(frozen=True, slots=True)
class Patient:
    patient_id: str
    issuer: str = ""
    name: str = ""

    def to_object(self) -> ParticipantObject:
        return patient_object(self.patient_id, issuer=self.issuer, name=self.name)


def _outcome_text(outcome: int, detail: str) -> str:
    return detail if detail else ("" if outcome == codes.SUCCESS else "failed")


def _studies(
    studies: Mapping[str, Mapping[str, int]], life_cycle: int | None = None
) -> list[ParticipantObject]:
    return [
        study_object(uid, sop_classes=dict(classes), life_cycle=life_cycle)
        for uid, classes in studies.items()
    ]


def _patients(patients: Sequence[Patient]) -> list[ParticipantObject]:
    seen: dict[tuple[str, str], Patient] = {}
    for patient in patients:
        if patient.patient_id or patient.name:
            seen.setdefault((patient.patient_id, patient.issuer), patient)
    return [p.to_object() for p in seen.values()]


# A.5.3.1 Application Activity
def application_activity(application: Party, launcher: Party | None, *, started: bool) -> AuditMessage:
    participants = [application.participant(requestor=launcher is None, roles=(codes.APPLICATION,))]
    if launcher is not None:
        participants.append(launcher.participant(requestor=True, roles=(codes.APPLICATION_LAUNCHER,)))
    return AuditMessage(
        event_id=codes.APPLICATION_ACTIVITY,
        event_types=(codes.APPLICATION_START if started else codes.APPLICATION_STOP,),
        action="E",
        outcome=codes.SUCCESS,
        participants=participants,
    )


# A.5.3.2 Audit Log Used
def audit_log_used(
    requestor: Party, node: Party, log_uri: str, *, outcome: int = 0, detail: str = ""
) -> AuditMessage:
    return AuditMessage(
        event_id=codes.AUDIT_LOG_USED,
        action="R",
        outcome=outcome,
        outcome_description=_outcome_text(outcome, detail),
        participants=[requestor.participant(requestor=True), node.participant(requestor=False)],
        objects=[audit_log_object(log_uri)],
    )


# A.5.3.3 Begin Transferring DICOM Instances
def begin_transferring(
    *,
    source: Party,
    destination: Party,
    requestor: Party | None,
    studies: Mapping[str, Mapping[str, int]],
    patients: Sequence[Patient] = (),
    outcome: int = codes.SUCCESS,
    detail: str = "",
) -> AuditMessage:
    message = transferred(
        source=source, destination=destination, requestor=requestor, studies=studies,
        patients=patients, outcome=outcome, detail=detail, action="E",
    )
    message.event_id = codes.BEGIN_TRANSFERRING
    return message


# A.5.3.4 DICOM Instances Accessed, A.5.3.5 DICOM Instances Transferred
def transferred(
    *,
    source: Party,
    destination: Party,
    requestor: Party | None,
    studies: Mapping[str, Mapping[str, int]],
    patients: Sequence[Patient] = (),
    action: str = "R",
    outcome: int = codes.SUCCESS,
    detail: str = "",
    event_id: Code = codes.INSTANCES_TRANSFERRED,
) -> AuditMessage:
    """Instances moved from ``source`` to ``destination``; ``requestor`` asked for it.

    ``requestor`` may be the source (C-STORE, STOW-RS), the destination (C-GET,
    WADO-RS) or a third party (C-MOVE): each party is listed once.
    """
    participants = [
        source.participant(requestor=requestor == source, roles=(codes.SOURCE,)),
        destination.participant(requestor=requestor == destination, roles=(codes.DESTINATION,)),
    ]
    if requestor is not None and requestor not in (source, destination):
        participants.append(requestor.participant(requestor=True))
    life_cycle = codes.LIFE_CYCLE_ORIGINATION if action == "C" else None
    return AuditMessage(
        event_id=event_id,
        action=action,
        outcome=outcome,
        outcome_description=_outcome_text(outcome, detail),
        participants=participants,
        objects=_studies(studies, life_cycle) + _patients(patients),
        patients_from_index=not patients,
    )


def accessed(
    *,
    requestor: Party,
    node: Party,
    studies: Mapping[str, Mapping[str, int]],
    patients: Sequence[Patient] = (),
    action: str = "R",
    outcome: int = codes.SUCCESS,
    detail: str = "",
) -> AuditMessage:
    life_cycle = codes.LIFE_CYCLE_LOGICAL_DELETION if action == "D" else codes.LIFE_CYCLE_ACCESS
    return AuditMessage(
        event_id=codes.INSTANCES_ACCESSED,
        action=action,
        outcome=outcome,
        outcome_description=_outcome_text(outcome, detail),
        participants=[requestor.participant(requestor=True), node.participant(requestor=False)],
        objects=_studies(studies, life_cycle) + _patients(patients),
        patients_from_index=not patients,
    )


# A.5.3.6 DICOM Study Deleted (a whole study), A.5.3.11 Patient Record (a patient)
def deleted(
    *,
    requestor: Party,
    node: Party,
    level: str,
    studies: Sequence[str],
    patients: Sequence[Patient],
    outcome: int = codes.SUCCESS,
    detail: str = "",
) -> AuditMessage:
    """A deletion: PATIENT -> Patient Record (D), STUDY -> Study Deleted, else Instances Accessed (D)."""
    if level in ("SERIES", "IMAGE"):
        return accessed(
            requestor=requestor, node=node, studies={uid: {} for uid in studies}, patients=patients,
            action="D", outcome=outcome, detail=detail,
        )
    event_id = codes.PATIENT_RECORD if level == "PATIENT" else codes.STUDY_DELETED
    objects = _studies({uid: {} for uid in studies}, codes.LIFE_CYCLE_LOGICAL_DELETION) + _patients(patients)
    return AuditMessage(
        event_id=event_id,
        action="D",
        outcome=outcome,
        outcome_description=_outcome_text(outcome, detail),
        participants=[requestor.participant(requestor=True), node.participant(requestor=False)],
        objects=objects,
    )


# A.5.3.7 Export
def export(
    *,
    requestor: Party,
    node: Party,
    media_uri: str,
    studies: Mapping[str, Mapping[str, int]],
    patients: Sequence[Patient] = (),
    outcome: int = codes.SUCCESS,
    detail: str = "",
) -> AuditMessage:
    """Data leaving Hilum's control (a zip download): the media is the download URI."""
    media = ActiveParticipant(
        user_id=media_uri,
        is_requestor=False,
        roles=(codes.DESTINATION_MEDIA,),
        media_type=codes.MEDIA_URI,
    )
    return AuditMessage(
        event_id=codes.EXPORT,
        action="R",
        outcome=outcome,
        outcome_description=_outcome_text(outcome, detail),
        participants=[
            requestor.participant(requestor=True, roles=(codes.DESTINATION,)),
            node.participant(requestor=False, roles=(codes.SOURCE,)),
            media,
        ],
        objects=_studies(studies, codes.LIFE_CYCLE_EXPORT) + _patients(patients),
        patients_from_index=not patients,
    )


# A.5.3.8 Import
def imported(
    *,
    requestor: Party,
    node: Party,
    studies: Mapping[str, Mapping[str, int]],
    outcome: int = 0,
    detail: str = "",
) -> AuditMessage:
    return AuditMessage(
        event_id=codes.IMPORT,
        action="C",
        outcome=outcome,
        outcome_description=_outcome_text(outcome, detail),
        participants=[
            requestor.participant(requestor=True),
            node.participant(requestor=False, roles=(codes.DESTINATION,)),
        ],
        objects=_studies(studies, codes.LIFE_CYCLE_ORIGINATION),
        patients_from_index=True,
    )


# A.5.3.10 Query
def query(
    *,
    requestor: Party,
    node: Party,
    sop_class_uid: str,
    query_bytes: bytes,
    transfer_syntax: str = "",
    patients: Sequence[Patient] = (),
    study_uids: Sequence[str] = (),
    outcome: int = codes.SUCCESS,
    detail: str = "",
) -> AuditMessage:
    """A query; patients and studies it names exactly are listed too, so searches find it."""
    return AuditMessage(
        event_id=codes.QUERY,
        action="E",
        outcome=outcome,
        outcome_description=_outcome_text(outcome, detail),
        participants=[
            requestor.participant(requestor=True, roles=(codes.SOURCE,)),
            node.participant(requestor=False, roles=(codes.DESTINATION,)),
        ],
        objects=[
            query_object(sop_class_uid, query_bytes, transfer_syntax=transfer_syntax),
            *_studies({uid: {} for uid in study_uids}),
            *_patients(patients),
        ],
    )


# A.5.3.11 Security Alert
def security_alert(
    *,
    reporter: Party,
    node: Party,
    event_type: Code,
    subject: ParticipantObject | None,
    outcome: int = codes.SUCCESS,
    detail: str = "",
) -> AuditMessage:
    objects: list[ParticipantObject] = []
    if subject is not None:
        if detail:
            subject = ParticipantObject(
                object_id=subject.object_id, id_type=subject.id_type, type_code=subject.type_code,
                role=subject.role, name=subject.name,
                details=(*subject.details, ("Alert Description", detail.encode("utf-8"))),
            )
        objects.append(subject)
    participants = [reporter.participant(requestor=True)]
    if reporter != node:
        participants.append(node.participant(requestor=False))
    return AuditMessage(
        event_id=codes.SECURITY_ALERT,
        event_types=(event_type,),
        action="E",
        outcome=outcome,
        outcome_description=detail,
        participants=participants,
        objects=objects,
    )


def user_subject(user_id: str) -> ParticipantObject:
    """A user account: type 1 (person), role 11 (security user entity), ID type 11."""
    return ParticipantObject(
        object_id=user_id, id_type=codes.USER_IDENTIFIER, type_code=codes.TYPE_PERSON,
        role=codes.ROLE_SECURITY_USER_ENTITY,
    )


def node_subject(node_id: str, name: str = "") -> ParticipantObject:
    """A network node (remote AE): type 2, role 5 (master file), ID type 110182 (Node ID)."""
    return ParticipantObject(
        object_id=node_id, id_type=codes.NODE_ID, type_code=codes.TYPE_SYSTEM_OBJECT,
        role=codes.ROLE_MASTER_FILE, name=name,
    )


def study_subject(study_uid: str) -> ParticipantObject:
    """A study (participant object type 2, role 3 report, ID type 110180 Study Instance UID)."""
    return _studies({study_uid: {}})[0]


def resource_subject(uri: str) -> ParticipantObject:
    """A configuration item or other resource named by a URI: type 2, role 13, ID type 12."""
    return ParticipantObject(
        object_id=uri, id_type=codes.URI, type_code=codes.TYPE_SYSTEM_OBJECT,
        role=codes.ROLE_SECURITY_RESOURCE,
    )


# A.5.3.12 User Authentication
def user_authentication(
    *, user: Party, node: Party, success: bool, logout: bool = False, detail: str = ""
) -> AuditMessage:
    outcome = codes.SUCCESS if success else codes.MINOR_FAILURE
    return AuditMessage(
        event_id=codes.USER_AUTHENTICATION,
        event_types=(codes.LOGOUT if logout else codes.LOGIN,),
        action="E",
        outcome=outcome,
        outcome_description=_outcome_text(outcome, detail),
        participants=[user.participant(requestor=True), node.participant(requestor=False)],
    )
