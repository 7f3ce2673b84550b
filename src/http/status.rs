//! The status page: one self-contained HTML document (no script, no external asset: hospital
//! networks reach no CDN) that reloads itself. It shows counts, our own words and anonymized
//! values; the only peer-chosen strings on it (calling AE titles, error texts) are escaped.

use std::fmt::Write;

use chrono::{DateTime, Utc};

use crate::export::status::Destination;
use crate::index::{Counts, QueueStatus};
use crate::observe::activity::{self, AssociationRecord};
use crate::observe::metrics;

/// Seconds between reloads.
pub const REFRESH_S: u32 = 10;

/// Everything the page shows, gathered by the handler.
pub struct Page {
    pub project: String,
    pub site_id: String,
    pub ae_title: String,
    pub scp_addr: String,
    /// "off", or where the TLS listener is and whether it asks for client certificates.
    pub tls: String,
    /// Every project of the node, one line each; empty on a node with one project.
    pub projects: Vec<ProjectSummary>,
    pub listener_up: bool,
    /// Why the node acknowledges nothing until restarted: a flush to disk failed.
    pub flush_failure: Option<String>,
    /// C-STORE outcomes since start whose audit row could not be written.
    pub audit_rows_dropped: u64,
    pub started: DateTime<Utc>,
    pub now: DateTime<Utc>,
    /// `Err`: why the index could not be read.
    pub counts: Result<Counts, String>,
    pub since_start: SinceStart,
    pub recent: Vec<AssociationRecord>,
    /// Instances in quarantine now, by reason directory.
    pub quarantine: Vec<(String, u64)>,
    /// "disabled", "running" or "paused (no credentials)".
    pub uploader: &'static str,
    pub queue: Result<QueueStatus, String>,
    /// Each DICOM destination's queue; `Err`: why it could not be read.
    pub destinations: Result<Vec<Destination>, String>,
    pub free_bytes: Option<u64>,
    pub min_free_bytes: u64,
    /// Instances stored in each of the last 60 minutes, oldest first.
    pub per_minute: Vec<u64>,
    pub pixels: PixelReads,
}

/// The pixel stage since start: images read for burned-in text, and being read now.
#[derive(Debug, Clone, Copy, Default)]
pub struct PixelReads {
    pub in_progress: u64,
    pub clean: u64,
    pub masked: u64,
    pub held: u64,
    pub kept_unread: u64,
}

/// One project at a glance, read from its own index, queue and quarantine.
#[derive(Debug, Clone)]
pub struct ProjectSummary {
    pub name: String,
    pub ae_title: String,
    /// `Err`: why its index could not be read.
    pub instances: Result<u64, String>,
    /// Upload queue, queued or uploading / failed; `None` when it could not be read.
    pub upload_waiting: Option<u64>,
    pub upload_failed: Option<u64>,
    pub uploader: &'static str,
    /// Every DICOM destination together: queued or sending / failed.
    pub export_waiting: u64,
    pub export_failed: u64,
    pub quarantined: u64,
}

/// Counters since this process started.
#[derive(Debug, Clone, Copy, Default)]
pub struct SinceStart {
    pub received: u64,
    pub stored: u64,
    pub quarantined: u64,
    pub refused: u64,
    /// Of those stored, how many came by STOW-RS (the rest by C-STORE).
    pub stored_by_stow: u64,
}

/// Escape text for HTML element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}\
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}\
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}\
td.n{text-align:right;font-variant-numeric:tabular-nums}.ok{color:#176b24}.bad{color:#a31515;font-weight:bold}\
.grid{display:flex;gap:2em;flex-wrap:wrap}.muted{color:#777}svg{background:#fff;border:1px solid #ddd}";

/// The whole page.
pub fn render(p: &Page) -> String {
    let mut h = String::with_capacity(16 * 1024);
    // Writing into a String cannot fail.
    let _ = write_page(&mut h, p);
    h
}

fn write_page(h: &mut String, p: &Page) -> std::fmt::Result {
    write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_S}\">\
         <title>{} · dicom-anon-gateway</title><style>{STYLE}</style></head><body>",
        escape(&p.project)
    )?;
    write!(
        h,
        "<h1>dicom-anon-gateway · project <span id=\"project\">{}</span></h1>\
         <p class=\"muted\">site {} · AE title {} · version {} · up since {} · page at {} (reloads every {REFRESH_S} s)</p>",
        escape(&p.project),
        escape(&p.site_id),
        escape(&p.ae_title),
        env!("CARGO_PKG_VERSION"),
        p.started.format("%Y-%m-%d %H:%M:%S UTC"),
        p.now.format("%Y-%m-%d %H:%M:%S UTC"),
    )?;

    if let Some(failure) = &p.flush_failure {
        write!(h, "<p id=\"flush-failure\" class=\"bad\">Not accepting instances: {}</p>", escape(failure))?;
    }
    h.push_str("<div class=\"grid\">");
    node(h, p)?;
    projects(h, p)?;
    index(h, &p.counts)?;
    // Counted by the process: said so on a node with several projects.
    let every = if p.projects.is_empty() { "" } else { " (every project)" };
    pixels(h, &p.pixels, every)?;
    quarantine(h, &p.quarantine)?;
    uploads(h, p.uploader, &p.queue)?;
    h.push_str("</div>");
    destinations(h, &p.destinations)?;
    write!(h, "<h2>Instances stored per minute, last hour (project {})</h2>", escape(&p.project))?;
    chart(h, &p.per_minute)?;
    associations(h, &p.recent, every)?;
    h.push_str("</body></html>");
    Ok(())
}

/// The node's listeners, disk and counters since start.
fn node(h: &mut String, p: &Page) -> std::fmt::Result {
    h.push_str("<section><h2>Node</h2><table>");
    let (state, class) = if p.listener_up { ("accepting", "ok") } else { ("not listening", "bad") };
    write!(
        h,
        "<tr><th>DICOM listener</th><td id=\"listener\" class=\"{class}\">{state} on {}</td></tr>\
         <tr><th>TLS</th><td id=\"tls\">{}</td></tr>",
        escape(&p.scp_addr),
        escape(&p.tls)
    )?;
    match p.free_bytes {
        Some(free) => {
            let class = if free >= p.min_free_bytes { "ok" } else { "bad" };
            write!(
                h,
                "<tr><th>Disk free</th><td id=\"disk\" class=\"{class}\">{} (minimum {})</td></tr>",
                bytes(free),
                bytes(p.min_free_bytes)
            )?;
        }
        None => h.push_str("<tr><th>Disk free</th><td id=\"disk\" class=\"bad\">unknown</td></tr>"),
    }
    // Counted by the process, so every project's: said so beside this project's boxes.
    let since = if p.projects.is_empty() { "Since start" } else { "Since start, every project" };
    let s = &p.since_start;
    write!(
        h,
        "<tr><th>{since}</th><td id=\"since-start\">received {} · stored {} (C-STORE {}, STOW-RS {}) · quarantined {} · refused {}</td></tr>",
        s.received,
        s.stored,
        s.stored.saturating_sub(s.stored_by_stow),
        s.stored_by_stow,
        s.quarantined,
        s.refused
    )?;
    // Only when it happened: a gap in the audit trail is something to act on, not a routine zero.
    if p.audit_rows_dropped > 0 {
        write!(
            h,
            "<tr><th>Audit trail</th><td id=\"audit-dropped\" class=\"bad\">{} audit rows could not be \
             written since start (see the log: a full disk or a failing index)</td></tr>",
            p.audit_rows_dropped
        )?;
    }
    h.push_str("</table></section>");
    Ok(())
}

/// What the shown project's index holds.
fn index(h: &mut String, counts: &Result<Counts, String>) -> std::fmt::Result {
    h.push_str("<section><h2>Index</h2><table>");
    match counts {
        Ok(c) => {
            for (name, n) in [
                ("patients", c.patients),
                ("studies", c.studies),
                ("series", c.series),
                ("instances", c.instances),
            ] {
                write!(h, "<tr><th>{name}</th><td class=\"n\" id=\"count-{name}\">{n}</td></tr>")?;
            }
        }
        Err(e) => write!(h, "<tr><td class=\"bad\">cannot read the index: {}</td></tr>", escape(e))?,
    }
    h.push_str("</table></section>");
    Ok(())
}

/// The pixel stage since start.
fn pixels(h: &mut String, px: &PixelReads, every: &str) -> std::fmt::Result {
    write!(
        h,
        "<section><h2>Burned-in text{every}</h2><table>\
         <tr><th>being read now</th><td class=\"n\" id=\"pixels-in-progress\">{}</td></tr>\
         <tr><th>read, nothing found</th><td class=\"n\" id=\"pixels-clean\">{}</td></tr>\
         <tr><th>text masked</th><td class=\"n\" id=\"pixels-masked\">{}</td></tr>\
         <tr><th>held (quarantined)</th><td class=\"n\" id=\"pixels-held\">{}</td></tr>\
         <tr><th>kept unread</th><td class=\"n\" id=\"pixels-kept-unread\">{}</td></tr></table></section>",
        px.in_progress, px.clean, px.masked, px.held, px.kept_unread
    )
}

/// The shown project's quarantine, by reason.
fn quarantine(h: &mut String, held: &[(String, u64)]) -> std::fmt::Result {
    h.push_str("<section><h2>Quarantine</h2><table>");
    if held.is_empty() {
        h.push_str("<tr><td class=\"muted\">empty</td></tr>");
    }
    for (reason, n) in held {
        write!(
            h,
            "<tr><th>{}</th><td class=\"n\" id=\"quarantine-{}\">{n}</td></tr>",
            escape(reason),
            escape(reason)
        )?;
    }
    h.push_str("</table></section>");
    Ok(())
}

/// The shown project's S3 queue and its uploader.
fn uploads(h: &mut String, uploader: &str, queue: &Result<QueueStatus, String>) -> std::fmt::Result {
    // Off, the queue below waits for an uploader that is not there: say so, so that it does not
    // read as a stuck one (an export-only node keeps every instance `queued` here).
    let uploader = match uploader {
        "disabled" => {
            "off (upload.enabled is false): nothing goes to S3; the counts below wait for an uploader"
        }
        running => running,
    };
    write!(
        h,
        "<section><h2>S3 uploads</h2><table><tr><th>uploader</th><td id=\"uploader\">{uploader}</td></tr>"
    )?;
    match queue {
        Ok(q) => {
            for state in metrics::QUEUE_STATES {
                let n = q.counts.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n);
                write!(h, "<tr><th>{state}</th><td class=\"n\" id=\"queue-{state}\">{n}</td></tr>")?;
            }
            let oldest = q.oldest_queued.as_deref().unwrap_or("none waiting");
            write!(h, "<tr><th>oldest waiting since</th><td>{}</td></tr>", escape(oldest))?;
            if let Some(f) = q.failed.first() {
                write!(
                    h,
                    "<tr><th>last error</th><td class=\"bad\">{} (attempts {})</td></tr>",
                    escape(&f.last_error),
                    f.attempts
                )?;
            }
        }
        Err(e) => write!(h, "<tr><td class=\"bad\">cannot read the queue: {}</td></tr>", escape(e))?,
    }
    h.push_str("</table></section>");
    Ok(())
}

/// The last associations, newest first.
fn associations(h: &mut String, recent: &[AssociationRecord], every: &str) -> std::fmt::Result {
    write!(h, "<h2>Last {} associations{every}</h2>", activity::RECENT)?;
    h.push_str(
        "<table id=\"associations\"><tr><th>ended (UTC)</th><th>calling AE</th><th>peer</th>\
         <th>instances</th><th>failures</th><th>how it ended</th></tr>",
    );
    if recent.is_empty() {
        h.push_str("<tr><td colspan=\"6\" class=\"muted\">none since start</td></tr>");
    }
    for a in recent {
        let calling = a.calling_ae.as_deref().map_or_else(|| "—".to_string(), escape);
        let class = if a.failures > 0 { "n bad" } else { "n" };
        write!(
            h,
            "<tr><td>{}</td><td>{calling}</td><td>{}</td><td class=\"n\">{}</td><td class=\"{class}\">{}</td><td>{}</td></tr>",
            a.ended.format("%Y-%m-%d %H:%M:%S"),
            escape(&a.peer.to_string()),
            a.instances,
            a.failures,
            escape(a.end)
        )?;
    }
    h.push_str("</table>");
    Ok(())
}

/// Every project, one row each, the one shown marked; nothing on a node with one project. Each
/// has its own index, queue and quarantine, so the boxes beside this table are the shown one's.
fn projects(h: &mut String, p: &Page) -> std::fmt::Result {
    if p.projects.is_empty() {
        return Ok(());
    }
    h.push_str(
        "<section><h2>Projects</h2><table id=\"projects\"><tr><th>project</th><th>AE title</th>\
         <th>instances</th><th>to upload</th><th>upload failed</th><th>uploader</th><th>to export</th>\
         <th>export failed</th><th>quarantined</th></tr>",
    );
    let number = |n: Option<u64>| n.map_or_else(|| "?".to_string(), |n| n.to_string());
    for (i, s) in p.projects.iter().enumerate() {
        let name = escape(&s.name);
        let link = if i == 0 { "/".to_string() } else { format!("/projects/{}", url_path(&s.name)) };
        let cell = if s.name == p.project {
            format!("<b>{name}</b> (shown)")
        } else {
            format!("<a href=\"{}\">{name}</a>", escape(&link))
        };
        let bad = |n: u64| if n > 0 { "n bad" } else { "n" };
        let instances = match &s.instances {
            Ok(n) => n.to_string(),
            Err(e) => format!("<span class=\"bad\">cannot read the index: {}</span>", escape(e)),
        };
        write!(
            h,
            "<tr id=\"project-{}\"><td>{cell}</td><td>{}</td><td class=\"n\">{instances}</td>\
             <td class=\"n\">{}</td><td class=\"{}\">{}</td><td>{}</td><td class=\"n\">{}</td>\
             <td class=\"{}\">{}</td><td class=\"{}\">{}</td></tr>",
            url_path(&s.name),
            escape(&s.ae_title),
            number(s.upload_waiting),
            bad(s.upload_failed.unwrap_or(0)),
            number(s.upload_failed),
            s.uploader,
            s.export_waiting,
            bad(s.export_failed),
            s.export_failed,
            bad(s.quarantined),
            s.quarantined,
        )?;
    }
    h.push_str("</table></section>");
    Ok(())
}

/// A project name as one URL path segment: everything but unreserved characters (RFC 3986)
/// percent-encoded.
fn url_path(name: &str) -> String {
    const UNRESERVED: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
    percent_encoding::utf8_percent_encode(name, UNRESERVED).to_string()
}

/// The DICOM destinations (`export.dicom`), one row each; nothing without any.
fn destinations(h: &mut String, destinations: &Result<Vec<Destination>, String>) -> std::fmt::Result {
    let list = match destinations {
        Ok(list) if list.is_empty() => return Ok(()),
        Ok(list) => list,
        Err(e) => {
            return write!(
                h,
                "<h2>DICOM destinations</h2><p class=\"bad\">cannot read their queues: {}</p>",
                escape(e)
            )
        }
    };
    h.push_str(
        "<h2>DICOM destinations</h2><table id=\"destinations\"><tr><th>name</th><th>peer</th><th>state</th>\
         <th>queued</th><th>failed</th><th>sent</th><th>oldest waiting since</th><th>last error</th></tr>",
    );
    for d in list {
        let state = d.state();
        let class = if matches!(state, "idle" | "sending") { "ok" } else { "bad" };
        let name = escape(&d.name);
        write!(
            h,
            "<tr id=\"destination-{name}\"><td>{name}</td><td>{}</td><td class=\"{class}\">{state}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td></tr>",
            escape(d.peer.as_deref().unwrap_or("—")),
            d.count("queued") + d.count("sending"),
            d.count("failed"),
            d.count("sent"),
            escape(d.oldest_waiting.as_deref().unwrap_or("none waiting")),
            escape(d.last_error.as_deref().unwrap_or("")),
        )?;
    }
    h.push_str("</table>");
    Ok(())
}

/// An inline SVG bar chart of the last hour, oldest minute on the left.
fn chart(h: &mut String, per_minute: &[u64]) -> std::fmt::Result {
    const W: usize = 720;
    const H: usize = 140;
    const TOP: usize = 16;
    const BOTTOM: usize = 20;
    let max = per_minute.iter().copied().max().unwrap_or(0).max(1);
    let slot = W as f64 / per_minute.len().max(1) as f64;
    write!(
        h,
        "<svg id=\"chart\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\" \
         aria-label=\"instances stored per minute\"><text x=\"4\" y=\"12\" font-size=\"11\">max {max}/min</text>"
    )?;
    let plot = (H - TOP - BOTTOM) as f64;
    for (i, &n) in per_minute.iter().enumerate() {
        let height = n as f64 / max as f64 * plot;
        let ago = per_minute.len() - 1 - i;
        write!(
            h,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{height:.1}\" fill=\"#3b73b9\">\
             <title>{n} instances, {ago} min ago</title></rect>",
            i as f64 * slot + 1.0,
            (H - BOTTOM) as f64 - height,
            (slot - 2.0).max(1.0)
        )?;
    }
    write!(
        h,
        "<line x1=\"0\" y1=\"{y}\" x2=\"{W}\" y2=\"{y}\" stroke=\"#999\"/>\
         <text x=\"2\" y=\"{t}\" font-size=\"11\">−60 min</text>\
         <text x=\"{r}\" y=\"{t}\" font-size=\"11\" text-anchor=\"end\">now</text></svg>",
        y = H - BOTTOM,
        t = H - 5,
        r = W - 2
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page() -> Page {
        Page {
            project: "P<1>".into(),
            site_id: "1".into(),
            ae_title: "ANON".into(),
            scp_addr: "127.0.0.1:104".into(),
            tls: "off".into(),
            projects: vec![summary("P<1>"), summary("B<2> #1")],
            listener_up: true,
            flush_failure: None,
            audit_rows_dropped: 0,
            started: Utc::now(),
            now: Utc::now(),
            counts: Ok(Counts { patients: 1, studies: 2, series: 3, instances: 4 }),
            since_start: SinceStart::default(),
            recent: vec![AssociationRecord {
                ended: Utc::now(),
                calling_ae: Some("<script>x</script>\"".into()),
                peer: "127.0.0.1:5000".parse().unwrap(),
                instances: 4,
                failures: 0,
                end: "released",
            }],
            quarantine: vec![("DICOM_Read_Error".into(), 2)],
            uploader: "disabled",
            queue: Ok(QueueStatus::default()),
            destinations: Ok(Vec::new()),
            free_bytes: Some(5 << 30),
            min_free_bytes: 1 << 30,
            per_minute: vec![0; 60],
            pixels: PixelReads { in_progress: 1, masked: 7, ..PixelReads::default() },
        }
    }

    #[test]
    fn peer_strings_are_escaped_and_counts_are_shown() {
        let html = render(&page());
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;x&lt;/script&gt;&quot;"));
        assert!(html.contains("P&lt;1&gt;"));
        assert!(html.contains("<b>P&lt;1&gt;</b> (shown)"), "the shown project is marked");
        assert!(
            html.contains("<a href=\"/projects/B%3C2%3E%20%231\">B&lt;2&gt; #1</a>"),
            "others link to theirs"
        );
        assert!(html.contains("id=\"project-B%3C2%3E%20%231\""));
        assert!(html.contains("(project P&lt;1&gt;)</h2>"), "the chart says whose it is");
        assert!(html.contains("<h2>Burned-in text (every project)</h2>"), "node-wide boxes say so");
        assert!(html.contains("Since start, every project"), "process-wide counts say so");
        assert!(html.contains("id=\"tls\">off<"));
        assert!(html.contains("id=\"count-instances\">4<"));
        assert!(html.contains("id=\"quarantine-DICOM_Read_Error\">2<"));
        assert!(html.contains("<svg id=\"chart\""));
        assert!(html.contains("5.0 GiB"));
        assert!(html.contains("id=\"pixels-masked\">7<") && html.contains("id=\"pixels-in-progress\">1<"));
    }

    fn summary(name: &str) -> ProjectSummary {
        ProjectSummary {
            name: name.into(),
            ae_title: "AE".into(),
            instances: Ok(3),
            upload_waiting: Some(2),
            upload_failed: Some(1),
            uploader: "running",
            export_waiting: 0,
            export_failed: 0,
            quarantined: 0,
        }
    }

    #[test]
    fn one_project_has_no_projects_table() {
        let html = render(&Page { projects: Vec::new(), ..page() });
        assert!(!html.contains("id=\"projects\"") && html.contains("<th>Since start</th>"), "{html}");
    }

    #[test]
    fn a_failed_flush_is_said_first_and_only_then() {
        assert!(!render(&page()).contains("flush-failure"));
        let failed = Page { flush_failure: Some("a flush to disk failed at <then>".into()), ..page() };
        let html = render(&failed);
        let said = html.find("id=\"flush-failure\"").expect("the failure is on the page");
        assert!(said < html.find("<h2>Node</h2>").unwrap(), "above everything else");
        assert!(html.contains("a flush to disk failed at &lt;then&gt;"));
    }

    #[test]
    fn dropped_audit_rows_are_shown_only_when_there_are_some() {
        assert!(!render(&page()).contains("audit-dropped"));
        let html = render(&Page { audit_rows_dropped: 3, ..page() });
        assert!(html.contains("id=\"audit-dropped\" class=\"bad\">3 audit rows"), "{html}");
    }

    #[test]
    fn escape_replaces_markup_and_control_characters() {
        assert_eq!(escape("a&b<c>'\"\n"), "a&amp;b&lt;c&gt;&#39;&quot;\u{FFFD}");
    }
}
