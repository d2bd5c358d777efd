"""The Basic Application Level Confidentiality Profile, applied to one data set.

PS3.15 E.1.1 and Table E.1-1 (hilum/deid/table_e11.py): each listed attribute
gets the Basic Profile action unless an option in use has its own action for
it; the table applies at every nesting level, inside sequences too.

Action codes (PS3.15 E.1.1, Table E.1-1 legend) and what Hilum does:

* X remove; Z empty; D dummy value consistent with the VR; U replace the UID
  with the job's consistent replacement; K keep (sequences: keep, their items
  de-identified); C clean (DA/DT shifted by the job's offset, TM kept, text
  with the instance's identifying strings redacted, sequences cleaned).
* X/Z, X/D, Z/D, X/Z/D ("X unless Z or D is required to maintain IOD
  conformance"): without the IOD's attribute types at hand, the value is
  replaced (Z for X/Z, D otherwise), which keeps any IOD conformant and keeps
  no original value. X/Z/U* on a sequence: kept, its UIDs replaced.
"""

from __future__ import annotations

from collections.abc import Callable

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID

from hilum.deid.job import BurnedInAnnotationRefused, DeidJob
from hilum.deid.options import BASIC_PROFILE_CODE, OPTION_CODES, Option
from hilum.deid.table_e11 import ROWS
from hilum.deid.values import TEXT_VRS, clean_text, dummy_for, identifying_strings, shift_da, shift_dt
from hilum.dicom.filemeta import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

# Free text inside SR content items / graphic annotations: the Basic Profile
# replaces Content Sequence and Graphic Annotation Sequence by dummies (D), so
# their text goes; with Clean Structured Content / Clean Graphics (C) it is cleaned.
FREE_TEXT_TAGS = frozenset({0x0040A160, 0x00700006})  # Text Value, Unformatted Text Value
# Attributes whose values are redacted from cleaned text (collected before any change).
IDENTIFYING_KEYWORDS = (
    "PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames", "PatientBirthName",
    "PatientMotherBirthName", "PatientBirthDate", "PatientAddress", "PatientTelephoneNumbers",
    "AccessionNumber", "StudyID", "ReferringPhysicianName", "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy", "OperatorsName", "RequestingPhysician",
    "InstitutionName", "InstitutionAddress", "StationName", "MilitaryRank", "BranchOfService",
)
CURVE_GROUPS = range(0x5000, 0x5020, 2)  # (50xx,xxxx) retired curves
OVERLAY_GROUPS = range(0x6000, 0x6020, 2)  # (60xx,xxxx) overlay planes


def resolve(basic: str, by_option: dict[str, str], options: frozenset[Option]) -> str:
    """The action for one row: a retaining option (K) wins over cleaning (C) over the Basic Profile."""
    chosen = [action for option, action in by_option.items() if option in options]
    if "K" in chosen:
        return "K"
    if "C" in chosen:
        return "C"
    return basic


class Deidentifier:
    """Applies the profile and options of one job to data sets, one at a time."""

    def __init__(self, job: DeidJob) -> None:
        self.job = job
        options = job.options
        self.actions: dict[int, str] = {}
        for key, (basic, by_option) in ROWS.items():
            if "x" not in key and key != "private":
                self.actions[int(key, 16)] = resolve(basic, by_option, options)
        self.keep_safe_private = resolve(*ROWS["private"], options) == "C"
        self.identifiers: list[str] = []

    # -- one instance --------------------------------------------------------
    def deidentify(self, ds: Dataset) -> Dataset:
        """De-identify ``ds`` in place (header only; pixel data is never touched)."""
        burned_in = str(ds.get("BurnedInAnnotation", "") or "").strip().upper() == "YES"
        if burned_in and not self.job.config.allow_burned_in:
            raise BurnedInAnnotationRefused(
                "BurnedInAnnotation is YES: text in the pixels may identify the patient "
                "(pass --allow-burned-in to export it anyway)"
            )
        self.identifiers = identifying_strings(ds.get(k) for k in IDENTIFYING_KEYWORDS)
        pseudonym = self.job.pseudonym(
            str(ds.get("PatientID", "") or ""), str(ds.get("PatientName", "") or "")
        )
        previous_methods = list(ds.get("DeidentificationMethod") or [])
        if isinstance(ds.get("DeidentificationMethod"), str):
            previous_methods = [ds.DeidentificationMethod]
        previous_codes = list(ds.get("DeidentificationMethodCodeSequence") or [])
        self._walk(ds, text_mode=None)
        ds.PatientName = pseudonym
        ds.PatientID = pseudonym
        self._mark(ds, previous_methods, previous_codes)
        if hasattr(ds, "file_meta"):
            ds.file_meta = self._file_meta(ds)
        return ds

    def _mark(self, ds: Dataset, methods: list[str], codes: list[Dataset]) -> None:
        """PS3.15 E.1.1 items 3 and 5 (and E.3.6): say what was done."""
        used = [BASIC_PROFILE_CODE, *sorted(OPTION_CODES[o] for o in self.job.options)]
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = [*methods, *(meaning for _, meaning in used)]
        items = []
        for value, meaning in used:
            item = Dataset()
            item.CodeValue = value
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning
            items.append(item)
        ds.DeidentificationMethodCodeSequence = Sequence([*codes, *items])
        if Option.FULL_DATES in self.job.options:
            ds.LongitudinalTemporalInformationModified = "UNMODIFIED"
        elif Option.MODIFIED_DATES in self.job.options:
            ds.LongitudinalTemporalInformationModified = "MODIFIED"
        else:
            ds.LongitudinalTemporalInformationModified = "REMOVED"

    def _file_meta(self, ds: Dataset) -> FileMetaDataset:
        old = ds.file_meta
        meta = FileMetaDataset()
        sop_class = ds.get("SOPClassUID") or old.get("MediaStorageSOPClassUID")
        sop_instance = ds.get("SOPInstanceUID") or self.job.output_uid(
            str(old.get("MediaStorageSOPInstanceUID", ""))
        )
        meta.MediaStorageSOPClassUID = UID(str(sop_class or ""))
        meta.MediaStorageSOPInstanceUID = UID(str(sop_instance))
        meta.TransferSyntaxUID = old.TransferSyntaxUID
        meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
        return meta

    # -- the walk ------------------------------------------------------------
    def clean_dataset(self, ds: Dataset) -> None:
        """Apply the table to ``ds`` without the top-level additions (e.g. trailing elements)."""
        self._walk(ds, text_mode=None)

    def _walk(self, ds: Dataset, text_mode: str | None) -> None:
        safe_private = self._safe_private_tags(ds) if self.keep_safe_private else set()
        for tag in list(ds.keys()):
            group = tag >> 16
            if group in CURVE_GROUPS or group in OVERLAY_GROUPS:
                # Curves and overlays go whole: their bitmaps/text cannot be
                # cleaned, and an overlay plane without its data is not valid.
                del ds[tag]
                continue
            if tag.is_private:
                if tag not in safe_private:
                    del ds[tag]
                continue
            elem = ds[tag]
            action = self.actions.get(int(tag))
            if int(tag) in FREE_TEXT_TAGS and text_mode is not None:
                action = "C" if text_mode == "C" else "D"
            if action is None:
                if elem.VR == "SQ":
                    self._items(elem, text_mode)
                continue
            self._apply(ds, tag, elem, action, text_mode)

    def _items(self, elem: DataElement, text_mode: str | None) -> None:
        for item in elem.value or []:
            self._walk(item, text_mode)

    def _apply(
        self, ds: Dataset, tag: BaseTag, elem: DataElement, action: str, text_mode: str | None
    ) -> None:
        vr = elem.VR
        if action == "X":
            del ds[tag]
        elif action in ("Z", "X/Z"):
            elem.value = [] if vr == "SQ" else elem.empty_value
        elif action in ("D", "X/D", "Z/D", "X/Z/D"):
            if vr == "SQ":
                self._items(elem, "C" if text_mode == "C" else "D")
            elif vr == "UI":
                self._map_uids(elem)
            else:
                elem.value = dummy_for(vr)
        elif action == "U" or action == "X/Z/U*":
            if vr == "SQ":
                self._items(elem, text_mode)
            elif vr == "UI":
                self._map_uids(elem)
            elif action == "X/Z/U*":
                del ds[tag]
            else:
                elem.value = dummy_for(vr)
        elif action == "K":
            if vr == "SQ":
                self._items(elem, text_mode)
        elif action == "C":
            self._clean(elem)
        else:  # pragma: no cover - the generated table only has the codes above
            raise ValueError(f"unknown Table E.1-1 action {action!r} for {tag}")

    def _clean(self, elem: DataElement) -> None:
        vr = elem.VR
        shift = self.job.date_shift_days
        if vr == "SQ":
            self._items(elem, "C")
        elif vr in ("DA", "DT"):
            if shift is None:
                elem.value = elem.empty_value
            else:
                shifter = shift_da if vr == "DA" else shift_dt
                elem.value = self._each(elem.value, lambda v: shifter(v, shift))
        elif vr == "UI":
            self._map_uids(elem)
        elif vr in TEXT_VRS and elem.value not in (None, ""):
            elem.value = self._each(elem.value, lambda v: clean_text(v, self.identifiers))
        # TM (whole-day shifts keep the time of day), numbers, codes: kept.

    @staticmethod
    def _each(value: object, change: Callable[[str], str]) -> object:
        """Apply ``change`` to every value of a (possibly multi-valued) element."""
        if value is None or value == "":
            return value
        if isinstance(value, MultiValue | list):
            return [change(str(v)) for v in value]
        return change(str(value))

    def _map_uids(self, elem: DataElement) -> None:
        if elem.value in (None, ""):
            return
        elem.value = self._each(elem.value, self.job.map_uid)

    def _safe_private_tags(self, ds: Dataset) -> set[int]:
        """Private elements listed as safe (creator, group, element byte), plus their creators."""
        wanted = self.job.config.safe_private
        keep: set[int] = set()
        if not wanted:
            return keep
        for tag in tuple(ds.keys()):
            group, element = tag >> 16, tag & 0xFFFF
            if not tag.is_private or element < 0x1000:
                continue
            creator_tag = (group << 16) | (element >> 8)
            creator = ds.get(creator_tag)
            if creator is None:
                continue
            if (str(creator.value).strip(), group, element & 0xFF) in wanted:
                keep.update({int(tag), creator_tag})
        return keep
