//! Which project answers an association: the one whose AE title the peer called.

use std::sync::Arc;

use super::{options_for, Node, Options};

/// The node's projects by AE title. One project is the common case; the lookup is a short scan.
pub struct Routes {
    nodes: Vec<Arc<Node>>,
}

impl Routes {
    /// `nodes` is never empty (a configuration has at least one project).
    pub fn new(nodes: Vec<Arc<Node>>) -> Routes {
        assert!(!nodes.is_empty(), "a node serves at least one project");
        Routes { nodes }
    }

    /// The project called as `called` (trailing padding ignored, as PS3.8 allows).
    pub fn get(&self, called: &str) -> Option<&Arc<Node>> {
        let called = called.trim_end_matches([' ', '\0']);
        self.nodes.iter().find(|n| n.scp.ae_title == called)
    }

    /// Node-wide listener settings (limits, timeouts) are the same in every project; read them here.
    pub fn first(&self) -> &Arc<Node> {
        &self.nodes[0]
    }

    /// Options that negotiate for every project at once: TLS hides the called AE title until the
    /// handshake, so the listener cannot route before negotiation as it does on plain TCP.
    pub(super) fn all_options(&self) -> Options {
        let scps: Vec<_> = self.nodes.iter().map(|n| &n.scp).collect();
        options_for(&scps)
    }
}
