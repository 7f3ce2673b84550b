//! dicom-anon-gateway: a DICOM node that de-identifies every instance on receipt, queues it durably
//! and uploads it to a research archive. See `docs/architecture.md` for the data flow, the rooms
//! and their layering, and the rules that hold everywhere.

pub mod anonymize;
pub mod cli;
pub mod config;
pub mod dicom;
pub mod dicomweb;
pub mod durability;
pub mod export;
pub mod file_modes;
pub mod http;
pub mod incoming;
pub mod index;
pub mod memory_budget;
pub mod node;
pub mod observe;
pub mod offline;
pub mod path_component;
pub mod pipeline;
pub mod queue;
pub mod recovery;
pub mod retrieve;
pub mod retry;
pub mod scp;
pub mod scu;
pub mod storage_lock;
pub mod upload;
