-- Catalog views over the `instances` table (registered from Delta by lake.catalog).
-- One statement per view; each column is described in docs/catalog.md.

-- series: one row per series; counts and sizes over its instances.
CREATE OR REPLACE TEMP VIEW series AS
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
    any_value(Rows) AS "Rows",
    any_value("Columns") AS "Columns",
    count(*) AS instance_count,
    sum(coalesce(NumberOfFrames, 1)) AS frame_count,
    sum(size_bytes) AS size_bytes,
    count(DISTINCT pixel_hash) AS distinct_pixel_blobs,
    min(ingested_at) AS first_ingested_at,
    max(ingested_at) AS last_ingested_at
FROM instances
GROUP BY SeriesInstanceUID;

-- studies: one row per study.
CREATE OR REPLACE TEMP VIEW studies AS
SELECT
    StudyInstanceUID,
    any_value(PatientID) AS PatientID,
    any_value(StudyDate) AS StudyDate,
    any_value(StudyTime) AS StudyTime,
    any_value(StudyDescription) AS StudyDescription,
    list_sort(list_distinct(list(Modality) FILTER (WHERE Modality IS NOT NULL))) AS ModalitiesInStudy,
    count(DISTINCT SeriesInstanceUID) AS NumberOfStudyRelatedSeries,
    count(*) AS NumberOfStudyRelatedInstances,
    sum(size_bytes) AS size_bytes
FROM instances
GROUP BY StudyInstanceUID;

-- patients: one row per (pseudonymous) patient.
CREATE OR REPLACE TEMP VIEW patients AS
SELECT
    PatientID,
    any_value(PatientSex) AS PatientSex,
    any_value(PatientAge) AS PatientAge,
    count(DISTINCT StudyInstanceUID) AS NumberOfPatientRelatedStudies,
    count(DISTINCT SeriesInstanceUID) AS NumberOfPatientRelatedSeries,
    count(*) AS NumberOfPatientRelatedInstances,
    sum(size_bytes) AS size_bytes
FROM instances
GROUP BY PatientID;
