"""De-identification: PS3.15 Annex E Basic Application Level Confidentiality Profile.

* :mod:`hilum.deid.table_e11` - Table E.1-1, generated (see ``_generate_table``);
* :mod:`hilum.deid.options` - the profile's options and their CID 7050 codes;
* :mod:`hilum.deid.job` - one job's secret, UID map, pseudonyms and date offset;
* :mod:`hilum.deid.profile` - the profile applied to a data set;
* :mod:`hilum.deid.stream` - one Part 10 file de-identified without loading its pixels;
* :mod:`hilum.deid.export` - `hilum export`.

Usage::

    job = DeidJob.create(DeidConfig(options=frozenset({Option.MODIFIED_DATES})))
    deid = Deidentifier(job)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        deidentify_stream(fin, fout, deid)
"""

from hilum.deid.job import BurnedInAnnotationRefused, DeidConfig, DeidentificationError, DeidJob
from hilum.deid.options import Option, parse_options
from hilum.deid.profile import Deidentifier
from hilum.deid.stream import DeidentifiedInstance, deidentify_stream

__all__ = [
    "BurnedInAnnotationRefused",
    "DeidConfig",
    "DeidJob",
    "DeidentificationError",
    "DeidentifiedInstance",
    "Deidentifier",
    "Option",
    "deidentify_stream",
    "parse_options",
]
