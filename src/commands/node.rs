//! `serve` and `check-config`: the node itself, and what a start would build, without starting.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use anyhow::Context;

use dicom_anon_gateway::config::Config;
use dicom_anon_gateway::pipeline::Pipeline;
use dicom_anon_gateway::{node, observe, scp};

use super::{block_on, Said};

/// Run the node until SIGINT or SIGTERM. The lines that give the ports are printed as soon as
/// the listeners are bound: scripts and tests wait for them.
pub fn serve(config: &Path) -> anyhow::Result<Said> {
    let projects = Config::load_all(config)?;
    observe::init(&projects[0].logging);
    block_on(async {
        let ae_titles: Vec<String> = projects.iter().map(|c| c.scp.ae_title.clone()).collect();
        let node = node::start_projects(projects, shutdown_signal()).await?;
        println!("listening on {} as {}", node.scp_addr, ae_titles.join(","));
        match node.http_addr {
            Some(addr) => println!("http on {addr}"),
            None => println!("http disabled"),
        }
        match node.tls_addr {
            Some(addr) => println!("tls on {addr}"),
            None => println!("tls disabled"),
        }
        std::io::stdout().flush()?;
        node.stopped().await?;
        Ok(Said::ok(""))
    })
}

/// Load every project as a start would (certificates, scripts, lookup tables, secrets) and print
/// each as it takes effect: a config file again, secrets never printed.
pub fn check_config(config: &Path) -> anyhow::Result<Said> {
    let projects = Config::load_all(config)?;
    if let Some(tls) = &projects[0].scp.tls {
        scp::check_tls(tls)?;
    }
    if let Some(tls) = &projects[0].http.tls {
        scp::http_server_config(tls)?;
    }
    for config in &projects {
        Pipeline::engine(&config.project).with_context(|| format!("project {}", config.project.name))?;
        node::export_tls(config)?;
        node::stow_clients(config)?;
    }
    let mut out = String::new();
    for config in &projects {
        // A PostgreSQL index is reached now: a wrong password or host shows here, not at start.
        let location = config.index_location()?;
        if let dicom_anon_gateway::index::Location::Postgres { node, .. } = &location {
            dicom_anon_gateway::index::Reader::open_at(&location)
                .with_context(|| format!("project {}: the index, {location}", config.project.name))?;
            let _ = writeln!(
                out,
                "# project {}: index {location} reachable; this node is {node}",
                config.project.name
            );
        }
    }
    // A YAML comment, so the output stays a config file.
    let (worst, unbounded) = projects[0].scp.worst_case_in_memory();
    let _ = writeln!(
        out,
        "# worst case of data sets in memory, node-wide: {worst} bytes (scp.max_in_memory_total_bytes; \
         without it, scp.max_associations x 1.5 x scp.max_in_memory_bytes would be {unbounded})"
    );
    let many = projects.len() > 1;
    for config in &projects {
        if many {
            let _ = writeln!(out, "--- # project {} (AE title {})", config.project.name, config.scp.ae_title);
        }
        out.push_str(&config.to_yaml());
    }
    Ok(Said::ok(out))
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
