//! Assembling one DIMSE message from P-DATA values: the command set in memory, the data set in
//! memory while it is small and in a spill file under `private/tmp/` once it is not, so memory per
//! association stays bounded whatever the instance size.

use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;

use crate::queue::Spill;

/// Data sets larger than this go to disk while they arrive.
const SPILL_AT: usize = crate::pipeline::IN_MEMORY_UP_TO;
/// Write buffer of a spill file.
const SPILL_BUFFER: usize = 1 << 20;

/// Where a data set's bytes are collecting.
pub enum DataSink {
    Memory(Vec<u8>),
    File {
        file: tokio::io::BufWriter<tokio::fs::File>,
        spill: Spill,
    },
    /// Over `max_instance_bytes`: the rest is read and dropped, then the instance refused.
    Discard,
}

/// A data set as it arrives.
pub struct Incoming {
    sink: DataSink,
    received: u64,
    max: u64,
    tmp: PathBuf,
}

/// A complete data set.
pub enum Received {
    Memory(Vec<u8>),
    File(Spill),
    /// Larger than allowed; nothing was kept.
    TooLarge(u64),
}

impl Incoming {
    /// A data set to collect, in memory in `buffer` (emptied) while it is small.
    pub fn new(max: u64, tmp: &Path, mut buffer: Vec<u8>) -> Incoming {
        buffer.clear();
        Incoming { sink: DataSink::Memory(buffer), received: 0, max, tmp: tmp.to_path_buf() }
    }

    /// Append one data PDV's bytes.
    pub async fn push(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.received += bytes.len() as u64;
        if self.received > self.max {
            self.sink = DataSink::Discard;
            return Ok(());
        }
        match &mut self.sink {
            DataSink::Memory(buf) if buf.len() + bytes.len() <= SPILL_AT => buf.extend_from_slice(bytes),
            DataSink::Memory(buf) => {
                let tmp = self.tmp.clone();
                let (spill, file) = tokio::task::spawn_blocking(move || Spill::create(&tmp))
                    .await
                    .map_err(std::io::Error::other)??;
                let mut file =
                    tokio::io::BufWriter::with_capacity(SPILL_BUFFER, tokio::fs::File::from_std(file));
                file.write_all(buf).await?;
                file.write_all(bytes).await?;
                self.sink = DataSink::File { file, spill };
            }
            DataSink::File { file, .. } => file.write_all(bytes).await?,
            DataSink::Discard => {}
        }
        Ok(())
    }

    /// Bytes received so far, kept or not.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The complete data set.
    pub async fn finish(self) -> std::io::Result<Received> {
        Ok(match self.sink {
            DataSink::Memory(buf) => Received::Memory(buf),
            DataSink::File { mut file, spill } => {
                file.flush().await?;
                Received::File(spill)
            }
            DataSink::Discard => Received::TooLarge(self.received),
        })
    }
}
