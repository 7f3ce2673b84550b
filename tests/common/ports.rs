//! Ports for peers that must be told their port before they start (dcmqrscp, storescp,
//! moto_server, the node as a C-MOVE destination).
//!
//! Asking the OS for port 0 and closing the socket is not enough: that port comes from the
//! ephemeral range, so any outgoing connection made by a parallel test (storescu, the SDK) may
//! take it before the peer binds, and DCMTK then exits with "Address already in use". Ports are
//! therefore taken below Linux's ephemeral range (32768–60999), never handed out twice by one
//! test binary, and checked free on every interface (DCMTK 3.6.7 binds 0.0.0.0).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::OnceLock;

/// Below the ephemeral range; above the registered services a test machine may run.
const FIRST: u16 = 20_000;
const COUNT: u16 = 12_000;

/// A port nobody listens on right now and no outgoing connection will take meanwhile.
pub fn free_port() -> u16 {
    // A random start per test binary, so binaries run side by side do not walk in step.
    static START: OnceLock<u16> = OnceLock::new();
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start =
        *START.get_or_init(|| (RandomState::new().hash_one(std::process::id()) % COUNT as u64) as u16);
    for _ in 0..COUNT {
        let port = FIRST + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % COUNT;
        if TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + COUNT)
}
