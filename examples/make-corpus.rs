//! Writes a synthetic PHI-laden corpus for benchmarks and manual tests:
//! `cargo run --release --example make-corpus -- DIR COUNT [ROWS] [PATIENTS] [FRAMES]`
//! (CT instances, explicit VR LE, ROWS×ROWS 16-bit, FRAMES frames, spread over PATIENTS patients,
//! one study each, and 5 series per study).

#[path = "../tests/common/corpus.rs"]
mod corpus;

use corpus::{instance, put, smith, Patient, Shape};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: make-corpus DIR COUNT [ROWS] [PATIENTS] [FRAMES]";
    let dir = std::path::PathBuf::from(args.get(1).expect(usage));
    let count: u32 = args.get(2).expect(usage).parse().expect("COUNT is a number");
    let rows: u16 = args.get(3).map_or(512, |r| r.parse().expect("ROWS is a number"));
    let patients: u32 = args.get(4).map_or(1, |p| p.parse().expect("PATIENTS is a number"));
    let frames: u32 = args.get(5).map_or(1, |f| f.parse().expect("FRAMES is a number"));
    // Each patient its own PatientID (the first is Smith's), so the index grows by patients too.
    let people: Vec<Patient> = (0..patients)
        .map(|k| match k {
            0 => smith(),
            k => Patient { id: String::leak(format!("MRN{k:07}")), ..smith() },
        })
        .collect();
    for i in 0..count {
        let shape = Shape {
            rows,
            frames,
            study: 1 + i % patients,
            series: 1 + i % 5,
            instance: i,
            ..Shape::default()
        };
        put(&dir, &format!("ct{i:05}.dcm"), &instance(&people[(i % patients) as usize], &shape));
    }
    println!("wrote {count} instances to {}", dir.display());
}
