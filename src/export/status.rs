//! Each export destination's queue (DICOM or STOW-RS) as operations see it: `queue status`, the status page and the
//! `/metrics` gauges all read it from here. A destination is named by its configured `name`,
//! which is ours (never a peer's word, never PHI), so it can be a metric label.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use crate::index::DestinationStatus;

/// Destinations whose exporter cannot associate now, with the reason, by calling AE title (one
/// per project) and destination name: a destination that refuses one project's AE title may take
/// another's. Process-wide, as the metrics are: the exporters set it, the page and the gauges
/// read it. The index cannot say it: an unreachable destination's instances stay `queued`.
static UNREACHABLE: LazyLock<Mutex<HashMap<(String, String), String>>> = LazyLock::new(Mutex::default);

/// The exporter of `name` calling as `calling` could not associate (`Some(error)`), or can again
/// (`None`).
pub fn set_unreachable(calling: &str, name: &str, error: Option<&str>) {
    let mut map = UNREACHABLE.lock().unwrap_or_else(|p| p.into_inner());
    let key = (calling.to_string(), name.to_string());
    match error {
        Some(e) => map.insert(key, e.to_string()),
        None => map.remove(&key),
    };
}

fn unreachable(calling: &str, name: &str) -> Option<String> {
    let map = UNREACHABLE.lock().unwrap_or_else(|p| p.into_inner());
    map.get(&(calling.to_string(), name.to_string())).cloned()
}

/// One destination now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub name: String,
    /// `AE@host:port`; `None`: the index has its queue but the config no longer lists it.
    pub peer: Option<String>,
    /// Instances in each state (`DESTINATION_STATES`), zero included.
    pub counts: Vec<(&'static str, u64)>,
    /// When the oldest instance not yet sent was stored.
    pub oldest_waiting: Option<String>,
    /// Why the destination cannot be reached now, else the error of the newest failed instance
    /// (the peer's words: escape before showing).
    pub last_error: Option<String>,
    /// Sends are paused: the destination does not associate.
    pub unreachable: bool,
}

/// Delivery states (`deliveries.state`), as the index names them.
pub const DESTINATION_STATES: [&str; 4] = ["queued", "sending", "sent", "failed"];

impl Destination {
    pub fn count(&self, state: &str) -> u64 {
        self.counts.iter().find(|(s, _)| *s == state).map_or(0, |(_, n)| *n)
    }

    /// One word for the page: what an operator acts on first.
    pub fn state(&self) -> &'static str {
        match (self.peer.is_some(), self.count("failed"), self.count("queued") + self.count("sending")) {
            (false, _, _) => "no longer configured",
            _ if self.unreachable => "unreachable (paused)",
            (true, 1.., _) => "failing",
            (true, 0, 1..) => "sending",
            (true, 0, 0) => "idle",
        }
    }
}

/// Every configured destination of the project calling as `calling`, in the config's order (also
/// one the index has never queued for), then any the index knows that the config no longer lists.
pub fn destinations(
    calling: &str,
    configured: &[(String, String)],
    status: &[DestinationStatus],
) -> Vec<Destination> {
    let of = |name: &str, peer: Option<String>| {
        let row = status.iter().find(|s| s.destination == name);
        let n =
            |state: &str| row.and_then(|r| r.counts.iter().find(|(s, _)| s == state)).map_or(0, |(_, n)| *n);
        let down = unreachable(calling, name);
        Destination {
            name: name.to_string(),
            unreachable: down.is_some(),
            peer,
            counts: DESTINATION_STATES.iter().map(|s| (*s, n(s))).collect(),
            oldest_waiting: row.and_then(|r| r.oldest_waiting.clone()),
            // `failed` is in the order of arrival: the newest instance's error is the last.
            last_error: down.or_else(|| row.and_then(|r| r.failed.last()).map(|(_, _, e, _)| e.clone())),
        }
    };
    let mut out: Vec<Destination> =
        configured.iter().map(|(name, label)| of(name, Some(label.clone()))).collect();
    for s in status {
        if !configured.iter().any(|(name, _)| *name == s.destination) {
            out.push(of(&s.destination, None));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_destinations_come_first_and_forgotten_ones_are_named() {
        let configured: crate::config::ExportConfig = serde_norway::from_str(
            "{ dicom: [{ name: research, ae_title: RES, host: 10.0.0.1, port: 104 }], dicomweb: [{ name: quiet, url: 'http://u:p@h:1/dw' }] }",
        )
        .unwrap();
        let configured = configured.destinations();
        assert_eq!(configured[1].1, "http://h:1/dw", "no user information shown");
        let status = vec![
            DestinationStatus {
                destination: "old".into(),
                counts: vec![("sent".into(), 3)],
                ..Default::default()
            },
            DestinationStatus {
                destination: "research".into(),
                counts: vec![("failed".into(), 2), ("queued".into(), 5)],
                failed: vec![
                    ("1.2".into(), 1, "first".into(), None),
                    ("1.3".into(), 1, "0xA700 out of resources".into(), None),
                ],
                oldest_waiting: Some("2026-01-01T00:00:00.000Z".into()),
            },
        ];
        let d = destinations("ANON", &configured, &status);
        let names: Vec<(&str, &str)> = d.iter().map(|d| (d.name.as_str(), d.state())).collect();
        assert_eq!(names, [("research", "failing"), ("quiet", "idle"), ("old", "no longer configured")]);
        assert_eq!(d[0].peer.as_deref(), Some("RES@10.0.0.1:104"));
        assert_eq!((d[0].count("queued"), d[0].count("failed"), d[0].count("sent")), (5, 2, 0));
        assert_eq!(d[0].last_error.as_deref(), Some("0xA700 out of resources"));
        assert_eq!(d[2].count("sent"), 3);
        set_unreachable("ANON", "quiet", Some("connection refused"));
        assert_eq!(destinations("OTHER", &configured, &status)[1].state(), "idle", "another project's");
        let d = destinations("ANON", &configured, &status);
        assert_eq!(
            (d[1].state(), d[1].last_error.as_deref()),
            ("unreachable (paused)", Some("connection refused"))
        );
        set_unreachable("ANON", "quiet", None);
        assert_eq!(destinations("ANON", &configured, &status)[1].state(), "idle");
    }
}
