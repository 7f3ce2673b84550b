//! A STOW-RS destination (PS3.18 §10.5): a batch of the queue's files in one `multipart/related`
//! request, each file streamed from disk as it is, and the response read per instance: one the
//! destination lists as failed (a 409 for one instance) fails alone, not the batch.
//!
//! Before sending an instance again after a failed or unanswered attempt, the destination is
//! asked (QIDO-RS, one query per series) whether it already holds it, so a lost response never
//! makes it store an instance twice.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;

use super::store::Sent;
use crate::config::{ClientTls, DicomwebDestination};
use crate::index::Delivery;

/// A response body is read up to this size (a batch's JSON is a few hundred bytes per instance).
const MAX_RESPONSE: usize = 16 << 20;
/// Each file is read from disk and sent in pieces of this size.
const CHUNK: usize = 256 << 10;

#[derive(Debug, thiserror::Error)]
pub enum StowSetupError {
    #[error("{key}.url: {0}", key = .1)]
    Url(String, String),
    #[error(transparent)]
    Tls(#[from] crate::scp::TlsError),
    #[error(transparent)]
    Secret(#[from] crate::config::ConfigError),
}

/// A destination, ready to send to: where, how to sign in, its limits.
pub struct StowClient {
    pub name: String,
    pub label: String,
    host: String,
    port: u16,
    /// `host:port` as the URL gives it (IPv6 in brackets): the Host header.
    authority: String,
    /// The URL's path, without a trailing `/`.
    base: String,
    tls: Option<(tokio_rustls::TlsConnector, rustls::pki_types::ServerName<'static>)>,
    authorization: Option<HeaderValue>,
    pub batch: usize,
    pub requests: usize,
    timeout: Duration,
}

impl StowClient {
    /// Read `d`'s certificates and secrets now (`key` names it in errors, as
    /// `export.dicomweb[0]`): a destination that cannot be set up stops the start.
    pub fn new(key: &str, d: &DicomwebDestination) -> Result<StowClient, StowSetupError> {
        let bad = |why: &str| StowSetupError::Url(why.to_string(), key.to_string());
        let uri: Uri = d.url.parse().map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("must be http:// or https://")),
        };
        let host = uri.host().ok_or_else(|| bad("has no host"))?.trim_matches(['[', ']']).to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority =
            uri.authority().map(|a| a.as_str().rsplit_once('@').map_or(a.as_str(), |(_, h)| h).to_string());
        let authority = authority.ok_or_else(|| bad("has no host"))?;
        let tls = if https {
            let ca_file = d.ca_file.clone().ok_or_else(|| bad("https:// needs ca_file"))?;
            let tls = ClientTls { ca_file, cert_file: None, key_file: None, server_name: None };
            let config = crate::scp::tls_client_config(key, &tls)?;
            let name =
                rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| bad(&e.to_string()))?;
            Some((tokio_rustls::TlsConnector::from(config), name))
        } else {
            None
        };
        let authorization = match &d.auth {
            Some(auth) => {
                let value = auth.header(&format!("{key}.auth"))?;
                let mut value = HeaderValue::from_str(&value)
                    .map_err(|_| bad("auth holds a character a header cannot"))?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        Ok(StowClient {
            name: d.name.clone(),
            label: d.label(),
            host,
            port,
            authority,
            base: uri.path().trim_end_matches('/').to_string(),
            tls,
            authorization,
            batch: d.batch,
            requests: d.requests,
            timeout: Duration::from_secs(d.timeout_s),
        })
    }

    /// Send `items` (files under `public`) in one request; every item gets its outcome. `Err`
    /// also says the destination could not be reached or refused us as a whole (pause it).
    pub async fn send_batch(
        &self,
        public: &Path,
        items: Vec<Delivery>,
    ) -> (Vec<(Delivery, Sent)>, Option<String>) {
        let mut outcomes = Vec::with_capacity(items.len());
        // Retries first ask whether the destination already holds them.
        let retried: Vec<&Delivery> = items.iter().filter(|i| i.attempts > 0).collect();
        let held = if retried.is_empty() { HashSet::new() } else { self.held(&retried).await };
        let mut parts = Vec::new();
        for item in items {
            if held.contains(&item.anon_sop_uid) {
                outcomes.push((item, Sent::AlreadyHeld));
                continue;
            }
            let path = public.join(&item.path);
            match tokio::fs::metadata(&path).await {
                Ok(m) => parts.push((item, path, m.len())),
                Err(e) => {
                    let error = format!("cannot read {}: {e}", item.path);
                    outcomes.push((item, Sent::Failed(error)));
                }
            }
        }
        if parts.is_empty() {
            return (outcomes, None);
        }
        match self.post(&parts).await {
            Ok((status, body)) => {
                let answer = Answer::read(&body);
                for (item, _, _) in parts {
                    let sent = answer.outcome(&item.anon_sop_uid, status);
                    outcomes.push((item, sent));
                }
                // The destination as a whole refused us: pause it, as an unreachable one.
                let whole = match status {
                    StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => {
                        Some(format!("HTTP {status} from {}", self.label))
                    }
                    s if s.is_server_error() => Some(format!("HTTP {status} from {}", self.label)),
                    _ => None,
                };
                (outcomes, whole)
            }
            Err(e) => {
                for (item, _, _) in parts {
                    outcomes.push((item, Sent::Failed(e.clone())));
                }
                (outcomes, Some(e))
            }
        }
    }

    /// POST the files as one multipart/related body, streamed; the status and the response body.
    ///
    /// The boundary is 128 random bits, new for each request, and each file is checked as it
    /// streams not to hold its delimiter: pixel data passes through from the sender unchanged, and
    /// a delimiter inside it would end the part there and start one the pipeline never saw.
    async fn post(&self, parts: &[(Delivery, PathBuf, u64)]) -> Result<(StatusCode, Bytes), String> {
        let boundary = random_boundary()?;
        let head = Bytes::from(format!("--{boundary}\r\nContent-Type: application/dicom\r\n\r\n"));
        let close = format!("--{boundary}--\r\n");
        let delimiter = Arc::new(format!("\r\n--{boundary}").into_bytes());
        let length: u64 =
            parts.iter().map(|(_, _, len)| head.len() as u64 + len + 2).sum::<u64>() + close.len() as u64;
        let files: Vec<(PathBuf, u64)> = parts.iter().map(|(_, path, len)| (path.clone(), *len)).collect();
        let stream = futures_util::stream::iter(files)
            .flat_map(move |(path, len)| {
                let head = futures_util::stream::once(std::future::ready(Ok(head.clone())));
                let end = futures_util::stream::once(async { Ok(Bytes::from_static(b"\r\n")) });
                head.chain(without_delimiter(file_chunks(path, len), delimiter.clone())).chain(end)
            })
            .chain(futures_util::stream::once(async move { Ok(Bytes::from(close)) }))
            .map(|chunk: Result<Bytes, std::io::Error>| chunk.map(Frame::data));
        let content_type = format!("multipart/related; type=\"application/dicom\"; boundary={boundary}");
        // Sending may take as long as the bytes need at a slow 1 MiB/s, then the answer its timeout.
        let allowance = self.timeout + Duration::from_secs(length >> 20);
        let request = self
            .request(Method::POST, &format!("{}/studies", self.base))
            .header(CONTENT_TYPE, content_type)
            .header(CONTENT_LENGTH, length)
            .body(StreamBody::new(stream))
            .map_err(|e| e.to_string())?;
        self.exchange(request, allowance).await
    }

    /// The anonymized SOP instance UIDs among `items` that the destination holds already, by a
    /// QIDO-RS query per series. A query that fails finds nothing: the instance is sent.
    async fn held(&self, items: &[&Delivery]) -> HashSet<String> {
        let series: HashSet<(&str, &str)> =
            items.iter().map(|i| (i.anon_study_uid.as_str(), i.anon_series_uid.as_str())).collect();
        let mut held = HashSet::new();
        for (study, series) in series {
            let path =
                format!("{}/studies/{study}/series/{series}/instances?includefield=00080018", self.base);
            let Ok(request) = self.request(Method::GET, &path).body(Full::new(Bytes::new())) else {
                continue;
            };
            let Ok((StatusCode::OK, body)) = self.exchange(request, self.timeout).await else { continue };
            let Ok(serde_json::Value::Array(found)) = serde_json::from_slice(&body) else { continue };
            held.extend(found.iter().filter_map(|o| o["00080018"]["Value"][0].as_str()).map(str::to_string));
        }
        held
    }

    fn request(&self, method: Method, path: &str) -> hyper::http::request::Builder {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.authority.as_str())
            .header(ACCEPT, "application/dicom+json");
        if let Some(auth) = &self.authorization {
            b = b.header(AUTHORIZATION, auth.clone());
        }
        b
    }

    /// One request on its own connection, within the timeout for connecting, and `allowance` for
    /// sending it and reading the answer; the status and the response body (bounded).
    async fn exchange<B>(
        &self,
        request: Request<B>,
        allowance: Duration,
    ) -> Result<(StatusCode, Bytes), String>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let label = &self.label;
        let connect = tokio::net::TcpStream::connect((self.host.as_str(), self.port));
        let tcp = tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| format!("no connection to {label} in {} s", self.timeout.as_secs()))?
            .map_err(|e| format!("cannot connect to {label}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let response = match &self.tls {
            None => self.over(tcp, request, allowance).await,
            Some((connector, name)) => {
                let tls = tokio::time::timeout(self.timeout, connector.connect(name.clone(), tcp))
                    .await
                    .map_err(|_| format!("no TLS session with {label} in {} s", self.timeout.as_secs()))?
                    .map_err(|e| format!("TLS with {label} failed: {e}"))?;
                self.over(tls, request, allowance).await
            }
        }?;
        Ok(response)
    }

    async fn over<I, B>(
        &self,
        io: I,
        request: Request<B>,
        allowance: Duration,
    ) -> Result<(StatusCode, Bytes), String>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let label = &self.label;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| format!("HTTP with {label} failed: {e}"))?;
        let driver = tokio::spawn(connection);
        let answered = async {
            let response = sender.send_request(request).await.map_err(|e| format!("{label}: {e}"))?;
            let status = response.status();
            let body = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| format!("{label}: the response could not be read: {e}"))?;
            Ok::<_, String>((status, body.to_bytes()))
        };
        let result = tokio::time::timeout(allowance, answered)
            .await
            .unwrap_or_else(|_| Err(format!("no answer from {label} in {} s", allowance.as_secs())));
        driver.abort();
        result
    }
}

/// 128 bits from the system's secure random source, as hex: a boundary no file can have been
/// made to contain.
fn random_boundary() -> Result<String, String> {
    let mut bits = [0u8; 16];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut bits)
        .map_err(|_| "no random bits for a multipart boundary".to_string())?;
    Ok(format!("dicom-anon-gateway-{}", hex::encode(bits)))
}

/// `chunks`, failing instead of passing on a delimiter (across chunk edges too).
fn without_delimiter(
    chunks: impl futures_util::Stream<Item = Result<Bytes, std::io::Error>>,
    delimiter: Arc<Vec<u8>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    let mut tail: Vec<u8> = Vec::new();
    chunks.map(move |chunk| {
        let chunk = chunk?;
        let keep = delimiter.len() - 1;
        tail.extend_from_slice(&chunk[..chunk.len().min(keep)]);
        let found = memchr::memmem::find(&tail, &delimiter).is_some()
            || memchr::memmem::find(&chunk, &delimiter).is_some();
        if found {
            return Err(std::io::Error::other("a file holds the request's multipart delimiter"));
        }
        let from = chunk.len().saturating_sub(keep);
        tail.clear();
        tail.extend_from_slice(&chunk[from..]);
        Ok(chunk)
    })
}

/// A file's bytes in chunks, read as they are sent; an error ends the body (the request fails).
fn file_chunks(path: PathBuf, len: u64) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::unfold(Some((path, None::<tokio::fs::File>, 0u64)), move |state| async move {
        let (path, file, sent) = state?;
        if sent >= len {
            return None;
        }
        let mut file = match file {
            Some(f) => f,
            None => match tokio::fs::File::open(&path).await {
                Ok(f) => f,
                Err(e) => return Some((Err(e), None)),
            },
        };
        let want = CHUNK.min((len - sent) as usize);
        let mut buf = vec![0u8; want];
        match file.read_exact(&mut buf).await {
            Ok(_) => Some((Ok(Bytes::from(buf)), Some((path, Some(file), sent + want as u64)))),
            Err(e) => Some((Err(e), None)),
        }
    })
}

/// What a STOW-RS response says of each instance.
#[derive(Default)]
struct Answer {
    stored: HashSet<String>,
    failed: HashMap<String, u16>,
    /// The body is DICOM JSON with a Referenced SOP Sequence (possibly empty).
    is_stow: bool,
}

impl Answer {
    /// The DICOM JSON response; anything else says nothing per instance.
    fn read(body: &[u8]) -> Answer {
        let mut a = Answer::default();
        let Ok(j) = serde_json::from_slice::<serde_json::Value>(body) else { return a };
        a.is_stow = j.get("00081199").is_some_and(serde_json::Value::is_object);
        let items = |tag: &str| j[tag]["Value"].as_array().cloned().unwrap_or_default();
        for item in items("00081199") {
            if let Some(uid) = item["00081155"]["Value"][0].as_str() {
                a.stored.insert(uid.to_string());
            }
        }
        for item in items("00081198") {
            if let Some(uid) = item["00081155"]["Value"][0].as_str() {
                let reason = &item["00081197"]["Value"][0];
                // As a number (PS3.18 F.2.3), or as text (Orthanc writes the decimal as a string).
                let code =
                    reason.as_u64().or_else(|| reason.as_str().and_then(|s| s.parse().ok())).unwrap_or(0);
                a.failed.insert(uid.to_string(), code as u16);
            }
        }
        a
    }

    /// One instance's outcome: listed failed, listed stored, or (unlisted) stored only when the
    /// whole request was (200) and the answer is a STOW-RS response at all; a 200 of something
    /// else (a wrong URL, a proxy's page) confirms nothing.
    fn outcome(&self, uid: &str, status: StatusCode) -> Sent {
        if let Some(code) = self.failed.get(uid) {
            return Sent::Failed(format!("HTTP {} with failure reason 0x{code:04X}", status.as_u16()));
        }
        if self.stored.contains(uid) || (status == StatusCode::OK && self.is_stow) {
            return Sent::Stored { warning: None };
        }
        Sent::Failed(format!("HTTP {}: not confirmed stored", status.as_u16()))
    }
}

/// Shared by the exporter's lanes.
pub type Client = Arc<StowClient>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_instance_is_judged_by_what_the_response_says_of_it() {
        let body = br#"{"00081199":{"vr":"SQ","Value":[{"00081155":{"vr":"UI","Value":["1.1"]}}]},
            "00081198":{"vr":"SQ","Value":[{"00081155":{"vr":"UI","Value":["1.2"]},"00081197":{"vr":"US","Value":[49152]}},
            {"00081155":{"vr":"UI","Value":["1.3"]},"00081197":{"vr":"US","Value":["272"]}}]}}"#;
        let a = Answer::read(body);
        assert!(matches!(a.outcome("1.1", StatusCode::ACCEPTED), Sent::Stored { .. }));
        assert!(matches!(a.outcome("1.2", StatusCode::ACCEPTED), Sent::Failed(e) if e.contains("0xC000")));
        assert!(matches!(a.outcome("1.3", StatusCode::ACCEPTED), Sent::Failed(e) if e.contains("0x0110")));
        assert!(
            matches!(a.outcome("1.4", StatusCode::ACCEPTED), Sent::Failed(e) if e.contains("not confirmed"))
        );
        assert!(
            matches!(a.outcome("1.4", StatusCode::OK), Sent::Stored { .. }),
            "200: every instance stored"
        );
        let empty = Answer::read(b"");
        assert!(
            matches!(empty.outcome("1.4", StatusCode::OK), Sent::Failed(_)),
            "a 200 that is no STOW-RS answer"
        );
        let page = Answer::read(br#"{"status": "ok"}"#);
        assert!(matches!(page.outcome("1.4", StatusCode::OK), Sent::Failed(_)));
        assert!(matches!(empty.outcome("1.4", StatusCode::CONFLICT), Sent::Failed(_)));
    }

    #[tokio::test]
    async fn a_file_streams_in_chunks_of_its_exact_length() {
        let d = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(CHUNK * 2 + 17)).map(|i| (i % 251) as u8).collect();
        let path = d.path().join("f");
        std::fs::write(&path, &data).unwrap();
        let chunks: Vec<Bytes> =
            file_chunks(path.clone(), data.len() as u64).map(|c| c.unwrap()).collect().await;
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks.concat(), data);
        let missing: Vec<_> = file_chunks(d.path().join("absent"), 10).collect().await;
        assert!(matches!(missing.as_slice(), [Err(_)]));
    }

    #[tokio::test]
    async fn a_delimiter_inside_a_file_fails_the_request_even_across_chunks() {
        let delimiter = Arc::new(b"\r\n--boundary".to_vec());
        let pass = |parts: Vec<&'static [u8]>| {
            let d = delimiter.clone();
            async move {
                let chunks = futures_util::stream::iter(parts.into_iter().map(|p| Ok(Bytes::from_static(p))));
                without_delimiter(chunks, d).collect::<Vec<_>>().await.into_iter().all(|c| c.is_ok())
            }
        };
        assert!(!pass(vec![b"\r\n--boundar", b"y-not quite"]).await, "split across chunks");
        assert!(!pass(vec![b"x\r\n--boundary"]).await);
        assert!(pass(vec![b"\r\n--boundar", b"Y", b"--boundary"]).await, "near misses pass");
        let a = random_boundary().unwrap();
        assert_ne!(a, random_boundary().unwrap());
        assert!(a.len() <= 70, "RFC 2046's bound");
    }
}
