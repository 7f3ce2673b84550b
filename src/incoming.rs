//! A data set as it arrives, from P-DATA values (DIMSE) or a multipart part (STOW-RS): in
//! memory while it is small and in a spill file under `private/tmp/` once it is not, so memory per
//! association or request stays bounded whatever the instance size.

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

#[cfg(test)]
mod tests {
    use super::*;

    fn files_in(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect()
    }

    /// `total` bytes with a pattern, so that order and completeness can be checked.
    fn data(total: usize) -> Vec<u8> {
        (0..total).map(|i| (i % 253) as u8).collect()
    }

    async fn receive(incoming: &mut Incoming, bytes: &[u8], pdv: usize) {
        for chunk in bytes.chunks(pdv) {
            incoming.push(chunk).await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_small_data_set_stays_in_memory_in_a_reused_buffer_emptied_first() {
        let d = tempfile::tempdir().unwrap();
        let mut spare = Vec::with_capacity(1 << 16);
        spare.extend_from_slice(b"the last association's bytes");
        let mut incoming = Incoming::new(1 << 30, d.path(), spare);
        let bytes = data(40_000);
        receive(&mut incoming, &bytes, 16_000).await;
        assert_eq!(incoming.received(), 40_000);
        match incoming.finish().await.unwrap() {
            Received::Memory(buf) => {
                assert_eq!(buf, bytes);
                assert!(buf.capacity() >= 1 << 16, "the spare buffer was used");
            }
            _ => panic!("a small data set went elsewhere than memory"),
        }
        assert!(files_in(d.path()).is_empty(), "nothing was spilled");
    }

    #[tokio::test]
    async fn up_to_the_threshold_in_memory_one_byte_past_it_spilled_whole() {
        let d = tempfile::tempdir().unwrap();
        let exactly = data(SPILL_AT);
        let mut incoming = Incoming::new(1 << 30, d.path(), Vec::new());
        receive(&mut incoming, &exactly, 1 << 16).await;
        assert!(matches!(incoming.finish().await.unwrap(), Received::Memory(b) if b == exactly));

        let past = data(SPILL_AT + 1);
        let mut incoming = Incoming::new(1 << 30, d.path(), Vec::new());
        receive(&mut incoming, &past, 1 << 16).await;
        assert_eq!(incoming.received(), past.len() as u64);
        let Received::File(spill) = incoming.finish().await.unwrap() else {
            panic!("a data set past the threshold stayed in memory")
        };
        assert_eq!(spill.path().parent(), Some(d.path()), "spilled into the given tmp directory");
        assert_eq!(std::fs::read(spill.path()).unwrap(), past, "what was in memory, then the rest");
        assert_eq!(files_in(d.path()), [spill.path().to_path_buf()]);
        drop(spill);
        assert!(files_in(d.path()).is_empty(), "the spill is removed when dropped");
    }

    #[tokio::test]
    async fn past_the_limit_nothing_is_kept_but_every_byte_is_counted() {
        let d = tempfile::tempdir().unwrap();
        // In memory when the limit is passed.
        let mut incoming = Incoming::new(1000, d.path(), Vec::new());
        receive(&mut incoming, &data(1000), 100).await;
        assert_eq!(incoming.received(), 1000);
        incoming.push(&[0]).await.unwrap();
        incoming.push(&data(5000)).await.unwrap();
        assert_eq!(incoming.received(), 6001, "the rest is read and counted");
        assert!(matches!(incoming.finish().await.unwrap(), Received::TooLarge(6001)));

        // Spilled when the limit is passed: the spill goes as soon as it is.
        let max = SPILL_AT as u64 + 100_000;
        let mut incoming = Incoming::new(max, d.path(), Vec::new());
        receive(&mut incoming, &data(SPILL_AT + 50_000), 1 << 16).await;
        assert_eq!(files_in(d.path()).len(), 1, "spilled");
        receive(&mut incoming, &data(60_000), 1 << 16).await;
        assert!(files_in(d.path()).is_empty(), "the spill of a refused data set is removed");
        assert_eq!(incoming.received(), SPILL_AT as u64 + 110_000);
        assert!(matches!(incoming.finish().await.unwrap(), Received::TooLarge(n) if n == max + 10_000));
    }

    #[tokio::test]
    async fn a_data_set_of_exactly_the_limit_is_kept() {
        let d = tempfile::tempdir().unwrap();
        let mut incoming = Incoming::new(1000, d.path(), Vec::new());
        let bytes = data(1000);
        receive(&mut incoming, &bytes, 999).await;
        assert!(matches!(incoming.finish().await.unwrap(), Received::Memory(b) if b == bytes));
    }

    #[tokio::test]
    async fn a_spill_that_cannot_be_created_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let mut incoming = Incoming::new(1 << 30, &d.path().join("absent"), Vec::new());
        incoming.push(&data(SPILL_AT)).await.unwrap();
        assert!(incoming.push(&[1]).await.is_err());
    }
}
