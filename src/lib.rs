//! dicom-anon-gateway: a DICOM node that de-identifies every instance on receipt, queues it durably
//! and uploads it to a research archive. See `../shared/design.md` for the data flow.

pub mod anonymize;
pub mod dicom;
