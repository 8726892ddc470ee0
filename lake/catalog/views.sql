-- Catalog views over the `instances` table (registered from Delta by lake.catalog).
-- One statement per view; each column is described in docs/catalog.md.
-- They aggregate `series_parts` and `study_parts`: per data file of `instances`, one row per
-- series (study) of the rows in that file, written when the file is committed
-- (lake/catalog/_summary.py); a file without them is aggregated from its rows on the fly.
-- Views of the database, not TEMP (one connection's own): every thread's cursor of a catalog
-- (lake.catalog.Catalog.connection) reads them.

-- series: one row per series; counts and sizes over its instances.
CREATE OR REPLACE VIEW series AS
SELECT
    SeriesInstanceUID,
    any_value(StudyInstanceUID) AS StudyInstanceUID,
    any_value(PatientID) AS PatientID,
    any_value(Modality) AS Modality,
    any_value(SeriesNumber) AS SeriesNumber,
    any_value(SeriesDescription) AS SeriesDescription,
    any_value(SeriesDate) AS SeriesDate,
    any_value(BodyPartExamined) AS BodyPartExamined,
    any_value(ProtocolName) AS ProtocolName,
    any_value(Manufacturer) AS Manufacturer,
    any_value(ManufacturerModelName) AS ManufacturerModelName,
    any_value(FrameOfReferenceUID) AS FrameOfReferenceUID,
    any_value(SliceThickness) AS SliceThickness,
    any_value("Rows") AS "Rows",
    any_value("Columns") AS "Columns",
    CAST(sum(instance_count) AS BIGINT) AS instance_count,
    CAST(sum(frame_count) AS BIGINT) AS frame_count,
    CAST(sum(size_bytes) AS BIGINT) AS size_bytes,
    min(first_ingested_at) AS first_ingested_at,
    max(last_ingested_at) AS last_ingested_at
FROM series_parts
GROUP BY SeriesInstanceUID;

-- studies: one row per study.
CREATE OR REPLACE VIEW studies AS
SELECT
    StudyInstanceUID,
    any_value(PatientID) AS PatientID,
    any_value(StudyDate) AS StudyDate,
    CAST(any_value(StudyTime) AS TIME) AS StudyTime,
    any_value(StudyDescription) AS StudyDescription,
    list_sort(list_distinct(flatten(list(modalities)))) AS ModalitiesInStudy,
    CASE WHEN count(*) = 1 THEN len(any_value(series))
         ELSE len(list_distinct(flatten(list(series)))) END AS NumberOfStudyRelatedSeries,
    CAST(sum(instance_count) AS BIGINT) AS NumberOfStudyRelatedInstances,
    CAST(sum(size_bytes) AS BIGINT) AS size_bytes
FROM study_parts
GROUP BY StudyInstanceUID;

-- patients: one row per (pseudonymous) patient.
CREATE OR REPLACE VIEW patients AS
SELECT
    PatientID,
    any_value(PatientSex) AS PatientSex,
    any_value(PatientAge) AS PatientAge,
    count(DISTINCT StudyInstanceUID) AS NumberOfPatientRelatedStudies,
    count(DISTINCT SeriesInstanceUID) AS NumberOfPatientRelatedSeries,
    CAST(sum(instance_count) AS BIGINT) AS NumberOfPatientRelatedInstances,
    CAST(sum(size_bytes) AS BIGINT) AS size_bytes
FROM series_parts
GROUP BY PatientID;
