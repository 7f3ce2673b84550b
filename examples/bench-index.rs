//! CPU cost of the index commit per stored instance, alone: `cargo run --release --example
//! bench-index -- [COUNT] [THREADS]` commits COUNT instances (10 per series, 50 per patient) from
//! THREADS threads and prints wall time, process CPU per instance, and the sizes of the index
//! and its WAL at the end (the WAL must not grow with the count).
use dicom_anon_gateway::anonymize::Identity;
use dicom_anon_gateway::index::{AuditRecord, Capture, Index, InstanceRecord, Owner};

fn cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let f: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let count: usize = args.get(1).map_or(20_000, |a| a.parse().unwrap());
    let threads: usize = args.get(2).map_or(1, |a| a.parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(&dir.path().join("index.db"), &Owner::for_site("972149")).unwrap();
    let (t0, c0) = (std::time::Instant::now(), cpu_s());
    std::thread::scope(|s| {
        for t in 0..threads {
            let index = index.clone();
            s.spawn(move || {
                for i in (t..count).step_by(threads) {
                    let (patient, series) = (i / 50, i / 10);
                    let capture = Capture {
                        original: Identity {
                            patient_id: format!("MRN{patient}"),
                            patient_name: Some("SMITH^ELIZABETH".into()),
                            sex: Some("F".into()),
                            birth_date: Some("19610203".into()),
                            study_uid: format!("1.2.3.{patient}"),
                            series_uid: format!("1.2.3.{patient}.{series}"),
                            sop_uid: format!("1.2.3.{patient}.{series}.{i}"),
                            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
                            accession: Some("ACC1".into()),
                            study_date: Some("20220101".into()),
                            modality: Some("CT".into()),
                        },
                        anon_patient_id: None,
                        anon_study_uid: format!("2.25.1{patient}"),
                        anon_accession: Some("A1".into()),
                        date_offset: Some(12),
                        source: "AE 'X' at 127.0.0.1".into(),
                        anon_series_uid: format!("2.25.2{patient}{series}"),
                        phrases: Default::default(),
                    };
                    let anon = match index.known_patient(&capture.patient_id) {
                        Some(anon) => anon,
                        None => index.capture(capture.clone()).unwrap(),
                    };
                    let anon_sop = format!("2.25.3{i:012}");
                    let record = InstanceRecord {
                        sop_uid: capture.sop_uid.clone(),
                        anon_sop_uid: anon_sop.clone(),
                        series_uid: capture.series_uid.clone(),
                        sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
                        path: format!(
                            "P/{}/{}/{anon_sop}.dcm",
                            capture.anon_study_uid, capture.anon_series_uid
                        ),
                        size: 500_000,
                        // A SHA-256 in hex, as the pipeline records it.
                        digest: format!("{i:064x}"),
                        uid_map: vec![
                            (capture.study_uid.clone(), capture.anon_study_uid.clone()),
                            (capture.series_uid.clone(), capture.anon_series_uid.clone()),
                            (capture.sop_uid.clone(), anon_sop.clone()),
                        ],
                    };
                    let audit = AuditRecord {
                        association: "a-1".into(),
                        calling_ae: "STORESCU".into(),
                        peer: "127.0.0.1:5000".into(),
                        anon_uids: Some((
                            capture.anon_study_uid.clone(),
                            capture.anon_series_uid.clone(),
                            anon_sop,
                        )),
                        status: "0x0000".into(),
                        reason: None,
                        bytes: 500_000,
                        pixels: None,
                    };
                    index.commit(capture, record, Some(audit), &anon).unwrap();
                }
            });
        }
    });
    let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_s() - c0);
    let mb = |name: &str| std::fs::metadata(dir.path().join(name)).map_or(0.0, |m| m.len() as f64 / 1e6);
    println!(
        "{count} commits from {threads} thread(s): {:.0}/s, CPU {:.1} µs per instance; index {:.1} MB, WAL {:.1} MB",
        count as f64 / wall,
        cpu * 1e6 / count as f64,
        mb("index.db"),
        mb("index.db-wal")
    );
    index.close();
}
