//! The engine's in-memory cost per instance, without disk or index:
//! `cargo run --release --example bench-engine -- FILE.dcm [ITERATIONS]`.
//! Parses the Part 10 file, reads the original keys, applies the default script and writes the
//! result to a reused buffer, ITERATIONS times; prints the mean per instance.

use std::sync::Arc;
use std::time::Instant;

use dicom_anon_gateway::anonymize::{AccessionFormat, Engine, Labels, Original, Rsna, Script, Settings};
use dicom_anon_gateway::dicom::{read_dataset, write_part10, Part10};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let file = std::fs::read(args.get(1).expect("usage: bench-engine FILE.dcm [ITERATIONS]"))
        .expect("readable file");
    let iterations: u32 = args.get(2).map_or(2000, |n| n.parse().expect("ITERATIONS is a number"));
    let script =
        Script::load("config/default-anonymizer.script".as_ref(), &Settings::default()).expect("script");
    let pseudonyms =
        Arc::new(Rsna::new("972149", "1.2.826.0.1.3680043.10.474.2", AccessionFormat::Hex16).unwrap());
    let engine =
        Engine::new(script, pseudonyms, Labels { project_name: "BENCH".into(), site_id: "972149".into() });
    let mut out = Vec::with_capacity(file.len() + 4096);
    let started = Instant::now();
    for _ in 0..iterations {
        out.clear();
        let p10 = Part10::parse(&file).expect("a Part 10 file");
        let mut ds =
            read_dataset(p10.body, p10.meta.transfer_syntax.encoding()).expect("a readable data set");
        let original = Original::read(&ds).expect("keys present");
        let keys = engine.keys(&original, "972149-000001").expect("the script looks nothing up");
        engine.apply(&mut ds, &original, keys).expect("the script looks nothing up");
        write_part10(&ds, &p10.meta.transfer_syntax, &mut out).expect("encodes");
    }
    let per = started.elapsed().as_secs_f64() / iterations as f64;
    println!(
        "engine: {:.1} µs per instance of {:.2} MB ({:.0} instances/s on one core; parse + anonymize + encode, no I/O)",
        per * 1e6,
        file.len() as f64 / 1e6,
        1.0 / per
    );
}
