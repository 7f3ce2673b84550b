//! This node as an SCU: one association to a peer over dicom-ul's async client, with the DIMSE
//! messages `retrieve` and export send on it. Every wait has a timeout; every error names the peer.

pub mod command;
pub mod find;

use std::time::Duration;

use std::sync::Arc;

use dicom_ul::association::client::{AsyncClientAssociation, AsyncTlsStream, ClientAssociationOptions};
use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu, PresentationContextResultReason};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use command::{status_meaning, Kind, Response, SubOperations};

use crate::config::DicomPeer;

/// The largest PDU we announce: what we receive are responses and C-FIND identifiers.
const MAX_PDU: u32 = 65536;
/// The largest data set a response may carry (a C-FIND match, a C-MOVE's failed UID list): a
/// peer cannot make us hold more.
const MAX_RESPONSE_DATA: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ScuError {
    #[error("{peer}: cannot associate: {source}")]
    Associate { peer: String, source: Box<dicom_ul::association::Error> },
    #[error("{peer}: no answer to the association request within {secs} s")]
    AssociateTimeout { peer: String, secs: u64 },
    #[error("{peer}: accepted none of the presentation contexts for {what}")]
    NoContext { peer: String, what: String },
    #[error("{peer}: {source}")]
    Network { peer: String, source: Box<dicom_ul::association::Error> },
    #[error("{peer}: {source}")]
    Io { peer: String, source: std::io::Error },
    #[error("{peer}: no response within {secs} s")]
    Timeout { peer: String, secs: u64 },
    #[error("{peer}: aborted the association")]
    Aborted { peer: String },
    #[error("{peer}: released the association while a response was awaited")]
    Released { peer: String },
    #[error("{peer}: {what}")]
    Protocol { peer: String, what: String },
    #[error("{peer}: {operation} failed with status 0x{status:04X} ({meaning})")]
    Refused { peer: String, operation: &'static str, status: u16, meaning: &'static str },
}

impl ScuError {
    /// Whether the association is still usable after this error.
    pub fn association_lost(&self) -> bool {
        !matches!(self, ScuError::NoContext { .. } | ScuError::Refused { .. })
    }
}

/// The two uncompressed syntaxes every SCP accepts (PS3.5 §10.1): fallbacks for every context.
pub const UNCOMPRESSED: [&str; 2] = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"];

/// One message read from the peer.
pub struct Message {
    pub pc_id: u8,
    pub response: Response,
    pub data: Option<Vec<u8>>,
}

/// DICOM TLS to a peer: the client configuration and the name its certificate must carry.
#[derive(Clone)]
pub struct ClientTls {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: String,
}

/// The association over plain TCP or TLS (boxed: the two differ much in size).
enum Link {
    Plain(Box<AsyncClientAssociation<TcpStream>>),
    Tls(Box<AsyncClientAssociation<AsyncTlsStream>>),
}

/// `$body` with `$a` bound to the association, whichever stream it runs on.
macro_rules! on_link {
    ($link:expr, $a:ident => $body:expr) => {
        match $link {
            Link::Plain($a) => $body,
            Link::Tls($a) => $body,
        }
    };
}

/// An open association with a peer.
pub struct Association {
    inner: Link,
    peer: String,
    timeout: Duration,
    next_message_id: u16,
}

impl Association {
    /// Associate with `peer` as `calling` over plain TCP, proposing `contexts` (abstract syntax,
    /// transfer syntaxes in order of preference).
    pub async fn open(
        peer: &DicomPeer,
        calling: &str,
        contexts: &[(String, Vec<String>)],
        timeout: Duration,
    ) -> Result<Association, ScuError> {
        Association::open_with(peer, calling, contexts, timeout, None).await
    }

    /// [`Association::open`], over DICOM TLS when `tls` is given.
    pub async fn open_with(
        peer: &DicomPeer,
        calling: &str,
        contexts: &[(String, Vec<String>)],
        timeout: Duration,
        tls: Option<&ClientTls>,
    ) -> Result<Association, ScuError> {
        let label = peer.label();
        let mut options = ClientAssociationOptions::new()
            .calling_ae_title(calling.to_string())
            .called_ae_title(peer.ae_title.clone())
            .max_pdu_length(MAX_PDU)
            .connection_timeout(timeout);
        for (class, syntaxes) in contexts {
            options = options.with_presentation_context(class.clone(), syntaxes.clone());
        }
        let addr = (peer.host.clone(), peer.port);
        let established = match tls {
            None => tokio::time::timeout(timeout, options.establish_async(addr))
                .await
                .map(|r| r.map(|a| Link::Plain(Box::new(a)))),
            Some(tls) => {
                let options = options.tls_config(tls.config.clone()).server_name(&tls.server_name);
                tokio::time::timeout(timeout, options.establish_tls_async(addr))
                    .await
                    .map(|r| r.map(|a| Link::Tls(Box::new(a))))
            }
        };
        let mut inner = match established {
            Ok(Ok(a)) => a,
            Ok(Err(source)) => return Err(ScuError::Associate { peer: label, source: Box::new(source) }),
            Err(_) => return Err(ScuError::AssociateTimeout { peer: label, secs: timeout.as_secs() }),
        };
        // Nagle holds back small PDUs (a command, a short identifier) for up to 40 ms.
        let _ = match &mut inner {
            Link::Plain(a) => a.inner_stream().set_nodelay(true),
            Link::Tls(a) => a.inner_stream().get_ref().0.set_nodelay(true),
        };
        Ok(Association { inner, peer: label, timeout, next_message_id: 1 })
    }

    /// `AE@host:port` of the peer.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// The accepted context for `class` whose syntax is the first of `wanted` the peer took:
    /// its id and transfer syntax.
    pub fn context(&self, class: &str, wanted: &[&str]) -> Option<(u8, String)> {
        let accepted = |pc: &&dicom_ul::pdu::PresentationContextNegotiated| {
            pc.reason == PresentationContextResultReason::Acceptance && pc.abstract_syntax == class
        };
        wanted.iter().find_map(|ts| {
            on_link!(&self.inner, a => a.presentation_contexts())
                .iter()
                .filter(accepted)
                .find(|pc| pc.transfer_syntax == *ts)
                .map(|pc| (pc.id, pc.transfer_syntax.clone()))
        })
    }

    /// A fresh message id (1 to 65535).
    pub fn message_id(&mut self) -> u16 {
        let id = self.next_message_id;
        self.next_message_id = self.next_message_id.checked_add(1).unwrap_or(1);
        id
    }

    /// Send a command and, when given, its data set from memory.
    pub async fn send(&mut self, pc_id: u8, command: Vec<u8>, data: Option<&[u8]>) -> Result<(), ScuError> {
        self.send_command(pc_id, command).await?;
        if let Some(data) = data {
            let mut reader = data;
            self.send_data(pc_id, &mut reader).await?;
        }
        Ok(())
    }

    /// Send a command set in one PDV.
    pub async fn send_command(&mut self, pc_id: u8, command: Vec<u8>) -> Result<(), ScuError> {
        let pdu = Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc_id,
                value_type: PDataValueType::Command,
                is_last: true,
                data: command,
            }],
        };
        let peer = &self.peer;
        let inner = &mut self.inner;
        match tokio::time::timeout(self.timeout, async { on_link!(inner, a => a.send(&pdu).await) }).await {
            Ok(r) => r.map_err(|source| ScuError::Network { peer: peer.clone(), source: Box::new(source) }),
            Err(_) => Err(ScuError::Timeout { peer: peer.clone(), secs: self.timeout.as_secs() }),
        }
    }

    /// Stream a data set to the peer in PDUs of its maximum length, never holding it whole.
    pub async fn send_data(
        &mut self,
        pc_id: u8,
        data: &mut (impl AsyncRead + Unpin),
    ) -> Result<(), ScuError> {
        let (peer, timeout) = (self.peer.clone(), self.timeout);
        let stalled = || ScuError::Timeout { peer: peer.clone(), secs: timeout.as_secs() };
        let io = |source| ScuError::Io { peer: peer.clone(), source };
        // The timeout is for a stall, chunk by chunk: a large instance on a slow link takes what
        // it takes, a peer that stops reading does not hold the association forever.
        let mut buf = vec![0u8; 256 * 1024];
        on_link!(&mut self.inner, a => {
            let mut writer = a.send_pdata(pc_id);
            loop {
                let n = data.read(&mut buf).await.map_err(io)?;
                if n == 0 {
                    break;
                }
                match tokio::time::timeout(timeout, writer.write_all(&buf[..n])).await {
                    Ok(r) => r.map_err(io)?,
                    Err(_) => return Err(stalled()),
                }
            }
            match tokio::time::timeout(timeout, async {
                writer.flush().await?;
                writer.finish().await
            })
            .await
            {
                Ok(r) => r.map_err(io),
                Err(_) => Err(stalled()),
            }
        })
    }

    /// Read the next message: a command and, when it says one follows, its data set.
    pub async fn receive(&mut self) -> Result<Message, ScuError> {
        let mut command = Vec::new();
        let mut data: Vec<u8> = Vec::new();
        let mut response: Option<Response> = None;
        loop {
            let inner = &mut self.inner;
            let pdu =
                match tokio::time::timeout(self.timeout, async { on_link!(inner, a => a.receive().await) })
                    .await
                {
                    Ok(Ok(pdu)) => pdu,
                    Ok(Err(source)) => {
                        return Err(ScuError::Network { peer: self.peer.clone(), source: Box::new(source) })
                    }
                    Err(_) => {
                        return Err(ScuError::Timeout {
                            peer: self.peer.clone(),
                            secs: self.timeout.as_secs(),
                        })
                    }
                };
            let values = match pdu {
                Pdu::PData { data } => data,
                Pdu::AbortRQ { .. } => return Err(ScuError::Aborted { peer: self.peer.clone() }),
                Pdu::ReleaseRQ => {
                    let _ = on_link!(&mut self.inner, a => a.send(&Pdu::ReleaseRP).await);
                    return Err(ScuError::Released { peer: self.peer.clone() });
                }
                other => {
                    return Err(self.protocol(format!("unexpected PDU: {}", other.short_description())));
                }
            };
            for value in values {
                let pc = value.presentation_context_id;
                match value.value_type {
                    PDataValueType::Command => {
                        if command.len() + value.data.len() > MAX_RESPONSE_DATA {
                            return Err(self.protocol("a response command set over 16 MiB".into()));
                        }
                        command.extend_from_slice(&value.data);
                        if value.is_last {
                            let parsed =
                                Response::parse(&command).map_err(|e| self.protocol(e.to_string()))?;
                            if !parsed.has_data_set {
                                return Ok(Message { pc_id: pc, response: parsed, data: None });
                            }
                            response = Some(parsed);
                        }
                    }
                    PDataValueType::Data => {
                        if response.is_none() {
                            return Err(self.protocol("a data set arrived before its command".into()));
                        }
                        if data.len() + value.data.len() > MAX_RESPONSE_DATA {
                            return Err(
                                self.protocol(format!("a response data set over {MAX_RESPONSE_DATA} bytes"))
                            );
                        }
                        data.extend_from_slice(&value.data);
                        if value.is_last {
                            let response = response.take().expect("checked above");
                            return Ok(Message { pc_id: pc, response, data: Some(data) });
                        }
                    }
                }
            }
        }
    }

    fn protocol(&self, what: String) -> ScuError {
        ScuError::Protocol { peer: self.peer.clone(), what }
    }

    /// Release; a peer that does not answer is left (the socket closes on drop).
    pub async fn release(self) {
        let timeout = self.timeout;
        on_link!(self.inner, a => {
            let _ = tokio::time::timeout(timeout, a.release()).await;
        })
    }

    pub async fn abort(self) {
        on_link!(self.inner, a => {
            let _ = a.abort().await;
        })
    }
}
