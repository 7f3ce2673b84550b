//! One association's worth of C-STOREs to a destination. Each file goes in its own transfer
//! syntax when the destination takes it (its bytes after the file meta, streamed as they are on
//! disk); an uncompressed file may go in the other uncompressed syntax, re-encoded in memory.
//! Every instance gets its own outcome: a refusal of one never stops the others.

use std::collections::HashSet;
use std::io::SeekFrom;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::config::DicomPeer;
use crate::dicom::{read_dataset, write_dataset, Part10, TransferSyntax};
use crate::index::Delivery;
use crate::scp::MAX_PRESENTATION_CONTEXTS;
use crate::scu::{command, find, status_meaning, Association, ClientTls, Kind, ScuError, UNCOMPRESSED};

/// A Part 10 file's meta group must fit in this much of its beginning.
const MAX_META: usize = 1 << 20;
/// What is read first to find it.
const FIRST_READ: usize = 16 << 10;
/// Re-encoding between the uncompressed syntaxes holds the data set in memory: only up to this.
const MAX_TRANSCODE: u64 = 256 << 20;

/// What became of one instance.
#[derive(Debug)]
pub enum Sent {
    /// The destination answered success (or a warning: it stored the instance).
    Stored { warning: Option<u16> },
    /// A C-FIND found it at the destination already: not sent.
    AlreadyHeld,
    /// This instance failed; the association may have gone on with the next.
    Failed(String),
    /// Never tried: the association failed before its turn. Not an attempt of its own.
    NotTried,
}

/// A local file ready to send.
struct Prepared {
    ts: String,
    body_offset: u64,
}

/// Read the transfer syntax and where the data set starts.
fn prepare(public: &Path, item: &Delivery) -> Result<Prepared, String> {
    use std::io::Read;
    let path = public.join(&item.path);
    let mut f = std::fs::File::open(&path).map_err(|e| format!("cannot open {}: {e}", item.path))?;
    // The meta group is a few hundred bytes: read a little, and more only if it needs more.
    let mut buf = Vec::with_capacity(FIRST_READ);
    for limit in [FIRST_READ, MAX_META] {
        let want = (limit - buf.len()) as u64;
        f.by_ref().take(want).read_to_end(&mut buf).map_err(|e| format!("cannot read {}: {e}", item.path))?;
        match Part10::parse(&buf) {
            Ok(p10) => {
                return Ok(Prepared {
                    ts: p10.meta.transfer_syntax.uid.clone(),
                    body_offset: p10.body_offset(&buf) as u64,
                })
            }
            // The whole file, or all the meta may take, was read.
            Err(e) if buf.len() < limit || limit == MAX_META => return Err(format!("{}: {e}", item.path)),
            Err(_) => {}
        }
    }
    unreachable!("the last limit always returns")
}

/// The presentation contexts for these files: each (class, own syntax), and each class in the
/// two uncompressed syntaxes as a fallback. [`runs`] keeps them within one association's limit.
pub fn contexts(items: &[(String, String)], check: bool) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    if check {
        out.push(find::context());
    }
    for (class, ts) in items {
        let own = (class.clone(), vec![ts.clone()]);
        if !out.contains(&own) {
            out.push(own);
        }
        let fallback = (class.clone(), UNCOMPRESSED.iter().map(|s| s.to_string()).collect());
        if !out.contains(&fallback) {
            out.push(fallback);
        }
    }
    out
}

/// `items` (class, own syntax) cut, in order, into runs whose [`contexts`] fit one association
/// (PS3.8 §9.3.2.2: at most 128), as lengths. Each run goes on its own association, so a batch
/// of many classes is sent whole rather than its tail refused for want of a context.
fn runs(items: &[(String, String)], check: bool) -> Vec<usize> {
    let mut out = Vec::new();
    let (mut own, mut classes) = (HashSet::new(), HashSet::new());
    let mut len = 0;
    for (class, ts) in items {
        // One context per distinct (class, syntax), one fallback per class, and C-FIND's.
        let grows = usize::from(!own.contains(&(class, ts))) + usize::from(!classes.contains(class));
        if len > 0 && usize::from(check) + own.len() + classes.len() + grows > MAX_PRESENTATION_CONTEXTS {
            out.push(len);
            (len, own, classes) = (0, HashSet::new(), HashSet::new());
        }
        own.insert((class, ts));
        classes.insert(class);
        len += 1;
    }
    if len > 0 {
        out.push(len);
    }
    out
}

/// Send `items` on one association. Returns each item with what became of it, and the error
/// that ended the association early, if one did.
pub async fn send_batch(
    peer: &DicomPeer,
    tls: Option<&ClientTls>,
    calling: &str,
    public: &Path,
    timeout: Duration,
    check: bool,
    items: Vec<Delivery>,
) -> (Vec<(Delivery, Sent)>, Option<ScuError>) {
    // Reading each file's meta is blocking file I/O: off the async workers.
    let dir = public.to_path_buf();
    let prepared = tokio::task::spawn_blocking(move || {
        items.into_iter().map(|item| (prepare(&dir, &item), item)).collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    let mut ready: Vec<(Delivery, Prepared)> = Vec::with_capacity(prepared.len());
    let mut out = Vec::with_capacity(prepared.len());
    for (p, item) in prepared {
        match p {
            Ok(p) => ready.push((item, p)),
            Err(e) => out.push((item, Sent::Failed(e))),
        }
    }
    if ready.is_empty() {
        return (out, None);
    }
    let pairs: Vec<(String, String)> =
        ready.iter().map(|(i, p)| (i.sop_class_uid.clone(), p.ts.clone())).collect();
    let mut rest = ready.into_iter();
    for len in runs(&pairs, check) {
        let run: Vec<_> = rest.by_ref().take(len).collect();
        if let Some(e) = send_run(peer, tls, calling, public, timeout, check, run, &mut out).await {
            out.extend(rest.map(|(i, _)| (i, Sent::NotTried)));
            return (out, Some(e));
        }
    }
    (out, None)
}

/// Send one run of [`runs`] on one association, each outcome into `out`; the error that ended the
/// association early, if one did.
#[allow(clippy::too_many_arguments)]
async fn send_run(
    peer: &DicomPeer,
    tls: Option<&ClientTls>,
    calling: &str,
    public: &Path,
    timeout: Duration,
    check: bool,
    mut ready: Vec<(Delivery, Prepared)>,
    out: &mut Vec<(Delivery, Sent)>,
) -> Option<ScuError> {
    let pairs: Vec<(String, String)> =
        ready.iter().map(|(i, p)| (i.sop_class_uid.clone(), p.ts.clone())).collect();
    let mut assoc = match Association::open_with(peer, calling, &contexts(&pairs, check), timeout, tls).await
    {
        Ok(a) => a,
        Err(e) => {
            out.extend(ready.into_iter().map(|(i, _)| (i, Sent::NotTried)));
            return Some(e);
        }
    };
    if check {
        match held(&mut assoc, &ready).await {
            Ok(held) => {
                let (there, to_send): (Vec<_>, Vec<_>) =
                    ready.into_iter().partition(|(i, _)| held.contains(&i.anon_sop_uid));
                out.extend(there.into_iter().map(|(i, _)| (i, Sent::AlreadyHeld)));
                ready = to_send;
            }
            Err(e) if e.association_lost() => {
                out.extend(ready.into_iter().map(|(i, _)| (i, Sent::NotTried)));
                assoc.abort().await;
                return Some(e);
            }
            // Refused or not offered: the destination cannot say, so it gets everything.
            Err(e) => tracing::debug!(error = %e, "cannot ask the destination what it holds"),
        }
    }
    let mut lost = None;
    let mut rest = ready.into_iter();
    for (item, prepared) in rest.by_ref() {
        match store_one(&mut assoc, public, &item, &prepared).await {
            Ok(sent) => out.push((item, sent)),
            Err(e) if !e.association_lost() => out.push((item, Sent::Failed(e.to_string()))),
            Err(e) => {
                out.push((item, Sent::Failed(e.to_string())));
                lost = Some(e);
                break;
            }
        }
    }
    out.extend(rest.map(|(i, _)| (i, Sent::NotTried)));
    match lost {
        Some(_) => assoc.abort().await,
        None => assoc.release().await,
    }
    lost
}

/// The anonymized SOP Instance UIDs among `ready` that the destination holds: one C-FIND per series.
async fn held(assoc: &mut Association, ready: &[(Delivery, Prepared)]) -> Result<HashSet<String>, ScuError> {
    let mut series: Vec<(&str, &str)> =
        ready.iter().map(|(i, _)| (i.anon_study_uid.as_str(), i.anon_series_uid.as_str())).collect();
    series.sort_unstable();
    series.dedup();
    let mut held = HashSet::new();
    for (study, series) in series {
        held.extend(find::instances_of_series(assoc, study, series).await?);
    }
    Ok(held)
}

async fn store_one(
    assoc: &mut Association,
    public: &Path,
    item: &Delivery,
    prepared: &Prepared,
) -> Result<Sent, ScuError> {
    let class = item.sop_class_uid.as_str();
    let own = prepared.ts.as_str();
    let mut wanted = vec![own];
    if UNCOMPRESSED.contains(&own) {
        wanted.extend(UNCOMPRESSED.iter().filter(|t| **t != own));
    }
    let Some((pc, ts)) = assoc.context(class, &wanted) else {
        return Ok(Sent::Failed(format!(
            "{} accepts SOP class {class} in none of the syntaxes {} (the file is {own})",
            assoc.peer(),
            wanted.join(", ")
        )));
    };
    let id = assoc.message_id();
    let rq = command::request(Kind::Store, id, class, Some(&item.anon_sop_uid), None);
    let path = public.join(&item.path);
    let local = |e: std::io::Error| Sent::Failed(format!("cannot read {}: {e}", item.path));
    if ts == own {
        let opened = async {
            let mut file = tokio::fs::File::open(&path).await?;
            file.seek(SeekFrom::Start(prepared.body_offset)).await?;
            Ok(file)
        };
        let mut file = match opened.await {
            Ok(f) => f,
            Err(e) => return Ok(local(e)),
        };
        assoc.send_command(pc, rq).await?;
        // A read error half-way leaves the peer with part of a data set: the association goes.
        assoc.send_data(pc, &mut file).await?;
    } else {
        if item.size > MAX_TRANSCODE {
            return Ok(Sent::Failed(format!(
                "{} accepts {class} only in {ts}; the file ({own}) is too large to re-encode",
                assoc.peer()
            )));
        }
        let mut bytes = Vec::with_capacity(item.size as usize);
        let read = async { tokio::fs::File::open(&path).await?.read_to_end(&mut bytes).await };
        if let Err(e) = read.await {
            return Ok(local(e));
        }
        let body = &bytes[prepared.body_offset as usize..];
        let re_encoded = read_dataset(body, TransferSyntax::new(own).encoding())
            .map_err(|e| e.to_string())
            .and_then(|ds| {
                let mut out = Vec::with_capacity(body.len());
                write_dataset(&ds, TransferSyntax::new(&ts).encoding(), &mut out)
                    .map_err(|e| e.to_string())?;
                Ok(out)
            });
        match re_encoded {
            Ok(data) => assoc.send(pc, rq, Some(&data)).await?,
            Err(e) => return Ok(Sent::Failed(format!("cannot re-encode {} as {ts}: {e}", item.path))),
        }
    }
    let rsp = assoc.receive().await?.response;
    Ok(match rsp.status {
        0x0000 => Sent::Stored { warning: None },
        s @ (0x0001 | 0xB000 | 0xB006 | 0xB007) => Sent::Stored { warning: Some(s) },
        s => {
            let comment = rsp.comment.map(|c| format!(" ({c})")).unwrap_or_default();
            Sent::Failed(format!("{} answered 0x{s:04X}: {}{comment}", assoc.peer(), status_meaning(s)))
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_class_is_proposed_in_its_own_syntaxes_and_both_uncompressed_ones_once() {
        let pairs = [
            ("1.2.ct".to_string(), "1.2.840.10008.1.2.4.50".to_string()),
            ("1.2.ct".to_string(), "1.2.840.10008.1.2.1".to_string()),
            ("1.2.ct".to_string(), "1.2.840.10008.1.2.4.50".to_string()),
        ];
        let c = super::contexts(&pairs, false);
        assert_eq!(c.len(), 3, "{c:?}");
        assert_eq!(c[0].1, ["1.2.840.10008.1.2.4.50"]);
        assert_eq!(c[1].1, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]);
        assert_eq!(c[2].1, ["1.2.840.10008.1.2.1"]);
    }

    #[test]
    fn a_batch_of_many_classes_is_cut_into_runs_whose_contexts_fit_one_association() {
        // 100 classes, each in two syntaxes: 300 contexts, over 128.
        let pairs: Vec<(String, String)> = (0..200)
            .map(|i| {
                (format!("1.2.{}", i / 2), ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50"][i % 2].into())
            })
            .collect();
        for check in [false, true] {
            let runs = super::runs(&pairs, check);
            assert_eq!(runs.iter().sum::<usize>(), pairs.len(), "every item in one run");
            let mut start = 0;
            for (n, len) in runs.iter().enumerate() {
                let c = super::contexts(&pairs[start..start + len], check);
                assert!(c.len() <= 128, "{} contexts", c.len());
                if n + 1 < runs.len() {
                    assert!(c.len() > 125, "runs are full ({}), not one per class", c.len());
                }
                start += len;
            }
        }
        assert_eq!(super::runs(&pairs[..20], false), [20], "a small batch is one run");
        assert!(super::runs(&[], true).is_empty());
    }
}
