//! A small, byte-preserving DICOM data set codec.
//!
//! Why not `dicom-object`? De-identification must pass every byte it does not change through
//! untouched: text in its original character set (an ISO 2022 name must not be re-encoded),
//! encapsulated pixel fragments, odd lengths, binary values in their original byte order. It must
//! also refuse a hostile declared length without allocating it, and touch a 0.5 MB instance in well
//! under a millisecond. Values here are slices of the input buffer until someone replaces them, and
//! every length is checked against the bytes that are actually there. `dicom-core` still supplies
//! the tag and VR types and `dicom-dictionary-std` the VR of implicit-VR elements.

mod command_set;
mod element;
mod part10;
mod read;
mod split;
mod syntax;
mod values;
mod write;

pub use command_set::{
    command_tags, command_us, encode_command, put_command_us, read_command, CommandSetError,
};
pub use element::{pad_text, trim_padding, DataSet, Element, Value};
pub use part10::{
    inflate_into, is_part10, media_storage_sop_class, write_meta, write_part10, FileMeta, InflateError,
    Part10, Part10Error, IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, MEDIA_STORAGE_DIRECTORY,
};
pub(crate) use read::tag_str;
pub use read::{in_dictionary, read_dataset, ReadError};
pub use split::{locate_pixel_data, PixelSpan, SplitError};
pub use syntax::{Encoding, TransferSyntax, EXPLICIT_VR_LE};
pub use values::{check_values, check_vrs, never_kept, repair_values, ValueError};
pub use write::{write_dataset, WriteError};

pub use dicom_core::{Tag, VR};
