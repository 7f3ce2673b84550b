//! Who receives the moved instances: the node already running on this config's port (it answers
//! a C-ECHO to its AE title), or else a node this command starts for the duration of the run.
//! The PACS knows the node by AE title, host and port, so both listen where the config says.

use std::time::Duration;

use tokio::sync::oneshot;

use crate::config::{Config, DicomPeer};
use crate::node::{self, Handle};
use crate::scu::{command, Association, Kind};
use crate::storage_lock::StorageLock;

use super::RetrieveError;

const VERIFICATION: &str = "1.2.840.10008.1.1";

pub enum Receiver {
    /// A node was already listening; it receives, uploads and exports as it always does.
    Running,
    /// Started by this command, without its uploader, exporters and HTTP endpoint: what arrives
    /// stays queued for the next `serve`.
    InProcess { stop: oneshot::Sender<()>, handle: Handle },
}

impl Receiver {
    pub fn describe(&self) -> &'static str {
        match self {
            Receiver::Running => "the node already running on this config's port receives",
            Receiver::InProcess { .. } => {
                "no node was running on this config's port; this command receives for the duration of the run"
            }
        }
    }

    /// Stop an in-process node once its last commit is done.
    pub async fn finish(self) -> Result<(), RetrieveError> {
        if let Receiver::InProcess { stop, handle } = self {
            let _ = stop.send(());
            handle.stopped().await.map_err(|e| RetrieveError::Receiver(e.to_string()))?;
        }
        Ok(())
    }
}

/// The running node, or a new one.
pub async fn receiver(config: &Config) -> Result<Receiver, RetrieveError> {
    if echo(config).await {
        // The node of this config holds its storage directory's lock. One that answers on the
        // port while no process holds it serves another archive: moving would fill that one.
        if StorageLock::holder(&config.storage.dir).is_none() {
            return Err(RetrieveError::Receiver(format!(
                "a node answers as {} on port {}, but no process serves this config's storage.dir {}: it is another node, and the moved instances would go into its archive; stop it, or give this config its own scp.port",
                config.scp.ae_title,
                config.scp.port,
                config.storage.dir.display()
            )));
        }
        return Ok(Receiver::Running);
    }
    let mut own = config.clone();
    own.http.enabled = false;
    own.upload.enabled = false;
    own.export.dicom.clear();
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = node::start(own, async move {
        let _ = stopped.await;
    })
    .await
    .map_err(|e| RetrieveError::Receiver(format!("cannot start the receiving node: {e}")))?;
    Ok(Receiver::InProcess { stop, handle })
}

/// Whether our own AE title answers a C-ECHO at the configured port.
async fn echo(config: &Config) -> bool {
    let host = match config.scp.host.as_str() {
        "0.0.0.0" => "127.0.0.1".to_string(),
        "::" => "::1".to_string(),
        h => h.to_string(),
    };
    let me =
        DicomPeer { name: "self".into(), ae_title: config.scp.ae_title.clone(), host, port: config.scp.port };
    let contexts =
        [(VERIFICATION.to_string(), crate::scu::UNCOMPRESSED.iter().map(|s| s.to_string()).collect())];
    let Ok(mut assoc) = Association::open(&me, &config.scp.ae_title, &contexts, Duration::from_secs(5)).await
    else {
        return false;
    };
    let Some((pc, _)) = assoc.context(VERIFICATION, &crate::scu::UNCOMPRESSED) else {
        assoc.abort().await;
        return false;
    };
    let id = assoc.message_id();
    let ok = match assoc.send(pc, command::request(Kind::Echo, id, VERIFICATION, None, None), None).await {
        Ok(()) => matches!(assoc.receive().await, Ok(m) if m.response.status == 0),
        Err(_) => false,
    };
    assoc.release().await;
    ok
}
